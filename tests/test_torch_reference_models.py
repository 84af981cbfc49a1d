"""The zoo models against hand-written PyTorch equivalents: ResNet-20, ViT, GPT, MLP and LeNet-5 imported with
``from_torch_state_dict`` compute torch's outputs, input gradients (images) and parameter gradients in float32,
in eval and (BatchNorm) train mode; ``to_torch_state_dict`` loads back into the torch module with strict=True."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nnjax
from nnjax import interop

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow  # about 50 s on 2 cores: in CI's slow pass, which installs torch
nn = torch.nn
F = torch.nn.functional

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TOL = dict(rtol=1e-4, atol=1e-4)  # float32, deep models (20 layers of BatchNorm'd convolutions)


def randomized(module, seed=0):
    """``module`` with every parameter and buffer drawn at random (biases nonzero, running variances > 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * 0.5
            if name.endswith("running_var") or name.endswith("weight") and tensor.ndim == 1:
                values = values.abs() + 0.5
            if tensor.ndim >= 2:  # fan-in scaling keeps deep activations O(1)
                values = values * 2 / np.sqrt(np.prod(tensor.shape[1:]))
            tensor.copy_(values.to(tensor.dtype))
    return module


def nhwc(x):
    return np.moveaxis(x, 1, -1) if x.ndim == 4 else x


def load(module, state_dict):
    return module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)


def check(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    np.testing.assert_allclose(actual, expected, **TOL, err_msg=what)


def compare_images(model, module, x, *, train, import_kw=None, make_module=None, check_state=None):
    """Imports ``module`` into ``model``; checks outputs, input and parameter gradients, and the round trip.

    ``x`` is the torch (NCHW) input; nnjax gets it channels-last.
    """
    import_kw = import_kw or {}
    module = module.float().train(train)
    template = {k: v.clone() for k, v in module.state_dict().items()}  # before train mode moves the statistics
    x = np.asarray(x, np.float32)
    params, state = interop.from_torch_state_dict(
        model, module.state_dict(), input_shape=nhwc(x).shape[1:], **import_kw
    )

    tx = torch.tensor(x, requires_grad=True)
    y_torch = module(tx)
    cotangent = np.random.RandomState(1).standard_normal(tuple(y_torch.shape)).astype(np.float32)
    (y_torch * torch.tensor(cotangent)).sum().backward()

    def run(params, x, cotangent):
        y, vjp, new_state = jax.vjp(lambda p, x: model.apply(p, state, x, train=train), params, x, has_aux=True)
        return y, vjp(cotangent), new_state

    if not train:
        run = jax.jit(run, compiler_options=FAST_COMPILE)
    # else op by op: jit-compiled, ResNet-20's train-mode float32 backward is off by up to 4e-3 (3% of the largest
    # input gradient) from torch's, eager JAX's and float64's (each within 3e-7 of the others); in float64 or eval
    # mode the jit-compiled one matches. The error enters in stage_3/basic_block_0 (the last strided block).
    y, (g_params, g_x), new_state = run(params, jnp.asarray(nhwc(x)), jnp.asarray(cotangent))
    check(y, y_torch.detach().numpy(), "outputs")
    check(g_x, nhwc(tx.grad.numpy()), "input gradients")
    shape = nhwc(x).shape[1:]  # jit's outputs have sorted keys: input_shape restores the forward order
    grads = interop.to_torch_state_dict(model, g_params, state, template=template, input_shape=shape, **import_kw)
    for name, parameter in module.named_parameters():
        check(grads[name], parameter.grad.numpy(), f"gradient of {name}")
    if check_state is not None:
        check_state(new_state, template, module, x.shape[0])

    if train:  # the round trip is the eval test's (same weights): this one checks training only
        return params, state
    # Round trip: the imported weights, exported, load strictly into a fresh module and give torch's outputs.
    exported = interop.to_torch_state_dict(model, params, state, template=template, **import_kw)
    assert list(exported) == list(template)
    fresh = (make_module or (lambda: type(module)()))().float().eval()
    load(fresh, exported)
    with torch.no_grad():
        check(fresh(torch.tensor(x)).numpy(), module.eval()(torch.tensor(x)).numpy(), "round trip")
    return params, state


# ---- ResNet-20 --------------------------------------------------------------------------------------------


class TorchBasicBlock(nn.Module):
    """torchvision's BasicBlock: bias-free 3x3 convs (padding 1), BatchNorm(eps=1e-5, momentum=0.1), projection."""

    def __init__(self, in_channels, features, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, features, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        self.downsample = None
        if stride != 1 or in_channels != features:
            conv = nn.Conv2d(in_channels, features, 1, stride=stride, bias=False)
            self.downsample = nn.Sequential(conv, nn.BatchNorm2d(features))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchResNet20(nn.Module):
    def __init__(self, num_classes=10, stages=(3, 3, 3), widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        layers, channels = [], widths[0]
        for i, (size, width) in enumerate(zip(stages, widths, strict=True)):
            blocks = []
            for j in range(size):
                blocks.append(TorchBasicBlock(channels, width, stride=2 if i > 0 and j == 0 else 1))
                channels = width
            layers.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        h = self.layers(self.stem(x))
        return self.fc(h.mean(dim=(2, 3)))


def check_resnet_stats(new_state, before, module, batch):
    """nnjax's zoo BatchNorm (momentum 0.9) moves the running mean as torch does; its running variance folds the
    biased batch variance where torch folds the unbiased one: nnjax's = 0.9 old + (torch's - 0.9 old)(n - 1)/n."""
    model = nnjax.models.ResNet20()
    exported = interop.to_torch_state_dict(
        model, *_zeros_like_params(new_state), template=before, input_shape=(32, 32, 3)
    )
    after = module.state_dict()
    checked = 0
    for key in before:
        if key.endswith("running_mean"):
            check(exported[key], after[key].numpy(), key)
            checked += 1
        elif key.endswith("running_var"):
            spatial = 32 * 32 if key.startswith("stem") or key.startswith("layers.0") else None
            if spatial is None:
                spatial = (16 * 16) if key.startswith("layers.1") else 8 * 8
            n = batch * spatial
            old, new = before[key].numpy(), after[key].numpy()
            check(exported[key], 0.9 * old + (new - 0.9 * old) * (n - 1) / n, key)
            checked += 1
    assert checked == 2 * 21  # the stem's norm, 2 per block (9 blocks), 2 projections' norms


def _zeros_like_params(state):
    params, _ = jax.eval_shape(lambda k: nnjax.models.ResNet20().init(k, (32, 32, 3)), jax.random.key(0))
    return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), params), state


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_resnet20_is_torch_cifar_resnet(train):
    x = np.random.RandomState(0).standard_normal((2, 3, 32, 32))
    compare_images(
        nnjax.models.ResNet20(),
        randomized(TorchResNet20()),
        x,
        train=train,
        check_state=check_resnet_stats if train else None,
    )


# ---- ViT --------------------------------------------------------------------------------------------------


def tanh_gelu(x):
    return F.gelu(x, approximate="tanh")  # jax.nn.gelu's default, nnjax's encoder blocks


class TorchViT(nn.Module):
    def __init__(self, image=16, channels=3, patch=4, hidden=32, depth=2, heads=4, mlp_dim=64, num_classes=10):
        super().__init__()
        tokens = (image // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(hidden))
        self.pos_embedding = nn.Parameter(torch.zeros(tokens, hidden))
        self.patch = nn.Conv2d(channels, hidden, patch, stride=patch)
        options = dict(dropout=0.0, activation=tanh_gelu, layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(hidden, heads, mlp_dim, **options) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, hidden), patches row by row
        h = torch.cat([self.class_token.expand(h.shape[0], 1, -1), h], dim=1) + self.pos_embedding
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])


VIT_MAPPING = {"class_token_1/token": "class_token", "patch_embedding_0": "patch"}


def vit_state_dict(module):
    """torch lists a module's own parameters before its children's; nnjax's position table is an Embedding-like
    ``{"table"}`` unit (torch ``<prefix>.weight``), so the bare ``pos_embedding`` tensor is renamed for it."""
    return {("pos_embedding.weight" if k == "pos_embedding" else k): v for k, v in module.state_dict().items()}


@pytest.mark.parametrize("scan_layers", [True, False], ids=["stacked", "unrolled"])
def test_vit_is_torch_pre_norm_transformer(scan_layers):
    """Both forms: the stacked encoder's copy ``i`` pairs with ``blocks.i`` as the unrolled block ``i`` does."""
    model = nnjax.models.ViT(
        patch_size=4, hidden=32, depth=2, num_heads=4, mlp_dim=64, num_classes=10, scan_layers=scan_layers
    )
    module = randomized(TorchViT()).float().eval()
    x = np.random.RandomState(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    sd = vit_state_dict(module)
    kw = dict(mapping={**VIT_MAPPING, "position_embedding_2": "pos_embedding"})
    params, state = interop.from_torch_state_dict(model, sd, input_shape=(16, 16, 3), **kw)

    tx = torch.tensor(x, requires_grad=True)
    y_torch = module(tx)
    cotangent = np.random.RandomState(1).standard_normal(tuple(y_torch.shape)).astype(np.float32)
    (y_torch * torch.tensor(cotangent)).sum().backward()

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, x, cotangent):
        y, vjp = jax.vjp(lambda p, x: model.apply(p, state, x)[0], params, x)
        return y, vjp(cotangent)

    y, (g_params, g_x) = run(params, jnp.asarray(nhwc(x)), jnp.asarray(cotangent))
    check(y, y_torch.detach().numpy(), "outputs")
    check(g_x, nhwc(tx.grad.numpy()), "input gradients")
    grads = interop.to_torch_state_dict(model, g_params, state, template=sd, input_shape=(16, 16, 3), **kw)
    for name, parameter in module.named_parameters():
        check(grads["pos_embedding.weight" if name == "pos_embedding" else name], parameter.grad.numpy(), name)

    exported = interop.to_torch_state_dict(model, params, state, template=sd, **kw)
    exported["pos_embedding"] = exported.pop("pos_embedding.weight")
    fresh = TorchViT().float().eval()
    load(fresh, exported)
    with torch.no_grad():
        check(fresh(torch.tensor(x)).numpy(), y_torch.detach().numpy(), "round trip")


# ---- GPT --------------------------------------------------------------------------------------------------


class TorchCausalSelfAttention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(hidden, hidden) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (m(x).view(b, t, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(h.transpose(1, 2).reshape(b, t, d))


class TorchGPTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_dim):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-5)
        self.attn = TorchCausalSelfAttention(hidden, heads)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-5)
        self.fc = nn.Linear(hidden, mlp_dim)
        self.proj = nn.Linear(mlp_dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(tanh_gelu(self.fc(self.ln_2(x))))


class TorchGPT(nn.Module):
    def __init__(self, vocab=50, max_len=16, hidden=32, depth=2, heads=4, mlp_dim=64):
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(max_len, hidden)
        self.blocks = nn.ModuleList(TorchGPTBlock(hidden, heads, mlp_dim) for _ in range(depth))
        self.ln_f = nn.LayerNorm(hidden, eps=1e-5)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, tokens):
        h = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))[None]
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))


def _separate_qkv_to_torch(p, s, ctx):
    out = {}
    for name, sub in (("query", "q"), ("key", "k"), ("value", "v")):
        w = np.asarray(p[name]["w"])  # (d, N, H) -> nn.Linear (N * H, d)
        out[f"{sub}.weight"] = w.reshape(w.shape[0], -1).T
        out[f"{sub}.bias"] = np.asarray(p[name]["b"]).reshape(-1)
    wo = np.asarray(p["out"]["w"])  # (N, H, d) -> (d, N * H)
    out["o.weight"] = wo.reshape(-1, wo.shape[-1]).T
    out["o.bias"] = np.asarray(p["out"]["b"])
    return out


def _separate_qkv_to_nnjax(t, p, s, ctx):
    params = {}
    for name, sub in (("query", "q"), ("key", "k"), ("value", "v")):
        w = t[f"{sub}.weight"]
        params[name] = {"w": w.T.reshape(p[name]["w"].shape), "b": t[f"{sub}.bias"].reshape(p[name]["b"].shape)}
    params["out"] = {"w": t["o.weight"].T.reshape(p["out"]["w"].shape), "b": t["o.bias"]}
    return params, s


SEPARATE_QKV = interop.Converter("4 nn.Linear (q, k, v, o)", _separate_qkv_to_torch, _separate_qkv_to_nnjax)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["stacked", "unrolled"])
def test_gpt_is_torch_gpt_with_separate_qkv_and_tied_embedding(monkeypatch, scan_layers):
    """interop has no converter for attention as four ``nn.Linear`` (its ``multi_head_attention`` is
    ``nn.MultiheadAttention``'s packed ``in_proj_weight``): one is registered through ``CONVERTERS`` and ``kinds``.
    The tied ``lm_head.weight`` (a second state_dict key for ``wte.weight``) is ignored on import and restored
    from ``wte.weight`` on export. The stacked blocks are seen as copies ``blocks/0``, ``blocks/1`` (paths for
    ``kinds``); the unrolled ones are ``block_0``, ``block_1``."""
    monkeypatch.setitem(interop.CONVERTERS, "separate_qkv", SEPARATE_QKV)
    model = nnjax.models.GPT(
        vocab_size=50, max_len=16, hidden=32, depth=2, num_heads=4, mlp_dim=64, scan_layers=scan_layers
    )
    module = randomized(TorchGPT()).float().eval()
    block = "blocks/{}" if scan_layers else "block_{}"
    kw = dict(kinds={f"{block.format(i)}/attention": "separate_qkv" for i in range(2)}, ignore=["lm_head.weight"])
    params, state = interop.from_torch_state_dict(model, module.state_dict(), input_shape=(12,), **kw)
    tokens = np.random.RandomState(0).randint(0, 50, (2, 12))

    y_torch = module(torch.tensor(tokens))
    cotangent = np.random.RandomState(1).standard_normal(tuple(y_torch.shape)).astype(np.float32)
    (y_torch * torch.tensor(cotangent)).sum().backward()

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(params, tokens, cotangent):
        y, vjp = jax.vjp(lambda p: model.apply(p, state, tokens)[0], params)
        return y, vjp(cotangent)[0]

    y, g_params = run(params, jnp.asarray(tokens, jnp.int32), jnp.asarray(cotangent))
    check(y, y_torch.detach().numpy(), "logits")
    grads = interop.to_torch_state_dict(model, g_params, state, template=module.state_dict(), input_shape=(12,), **kw)
    names = [name for name, _ in module.named_parameters()]
    assert "lm_head.weight" not in names  # tied: one parameter, both uses' gradients
    for name, parameter in module.named_parameters():
        check(grads[name], parameter.grad.numpy(), f"gradient of {name}")

    exported = interop.to_torch_state_dict(model, params, state, template=module.state_dict(), **kw)
    assert "lm_head.weight" not in exported
    exported["lm_head.weight"] = exported["wte.weight"]
    fresh = TorchGPT().float().eval()
    load(fresh, exported)
    with torch.no_grad():
        check(fresh(torch.tensor(tokens)).numpy(), y_torch.detach().numpy(), "round trip")


# ---- MLP and LeNet-5 --------------------------------------------------------------------------------------


class TorchMLP(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


def test_mlp_is_torch_sequential():
    """One channel: torch's (C, H, W) flatten order is nnjax's (H, W, C) one."""
    x = np.random.RandomState(0).standard_normal((4, 1, 8, 8))
    compare_images(nnjax.models.MLP((32, 16), 10), randomized(TorchMLP()), x, train=False)


class ChannelsLastFlatten(nn.Module):
    """nnjax.Flatten's order, (H, W, C), which the zoo's LeNet5 uses (it has no TorchFlatten option)."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


class TorchLeNet5(nn.Sequential):
    def __init__(self, image=8, padding="SAME"):
        pad = 2 if padding == "SAME" else 0
        side = (image // 2 + 2 * pad - 4) // 2
        super().__init__(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad),
            nn.ReLU(),
            nn.AvgPool2d(2),
            ChannelsLastFlatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )


@pytest.mark.parametrize(("image", "padding"), [(8, "SAME"), (28, "VALID")], ids=["digits-same", "mnist-valid"])
def test_lenet5_is_torch_lenet5(image, padding):
    x = np.random.RandomState(0).standard_normal((3, 1, image, image))
    compare_images(
        nnjax.models.LeNet5(padding=padding),
        randomized(TorchLeNet5(image, padding)),
        x,
        train=False,
        make_module=lambda: TorchLeNet5(image, padding),
    )
