"""Flax linen networks for both stages, and the pure `Networks` bundle the losses use.

Stage 1 (pi^1, Q^1): a 4-layer CNN over the image o and a 2-layer MLP over the pose z,
concatenated and fed to 2-layer MLP heads. Stage 2 (pi^2, Q^2): 3-layer CNNs over o^2 and e^2,
2-layer MLPs over z and a^1, concatenated and fed to 2-layer MLP heads (paper, Sec. V).

Parameters are one dict `{'encoder', 'actor', ['critic', 'log_alpha']}`. For CQL the encoder
is shared, as in pixel SAC (DrQ): the critic loss trains it and the actor head reads its
features through `stop_gradient`. For BC the encoder is trained by the BC loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from twostage_jax import _checks
from twostage_jax._checks import ConfigError
from twostage_jax.types import ACTION_DIM, Stage1Obs, Stage2Obs

CONV_IMPLS = ("auto", "xla", "patches")
CROP_ENCODERS = ("flatten", "spatial_softmax")
VIEW_ENCODERS = ("shared", "separate", "stacked")
# Fastest conv implementation per backend, from experiments/tools/benchmark.py. On CPU, XLA's
# convolution (and, under vmap over seeds, its grouped convolution) is several times slower
# than im2col + matmul at these sizes, single seed and vmapped alike. No GPU/TPU measurement
# exists yet, so those default to XLA's native convolution (cuDNN / TPU conv units).
AUTO_CONV_IMPL = {"cpu": "patches"}
LOG_STD_MIN = -5.0
LOG_STD_MAX = 2.0


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Network sizes.

    Attributes:
      conv_channels: output channels of each stage-1 conv layer (4 layers in the paper).
      crop_conv_channels: output channels of each stage-2 conv layer (3 layers).
      conv_strides: stride of every conv layer (3x3 kernels, 'SAME' padding); applied to the
        first len(channels) layers.
      mlp_hidden: width of the 2-layer MLPs over z and a^1.
      head_hidden: widths of the 2-layer MLP heads.
      conv_impl: 'auto' (default: the fastest measured implementation for the default
        backend, see `resolve_conv_impl`), 'xla' (lax.conv) or 'patches' (im2col + matmul;
        under vmap over seeds the per-seed kernels become one batched matmul instead of a
        grouped convolution). All three have identical parameters and equal outputs up to
        float rounding, so checkpoints move freely between them.
      crop_encoder: how stage 2's crop CNNs end: 'flatten' (the paper: the feature map,
        flattened) or 'spatial_softmax' (a 1x1 conv to `keypoints` maps, a softmax over each
        map's pixels with a learned temperature, and the expected (x, y) of each: 2-D
        keypoints, robomimic's default visual encoder, which regresses image positions far
        better than flatten + MLP).
      coord_channels: append two channels holding each pixel's (x, y) in [-1, 1] to stage 2's
        crops before the first conv (CoordConv, Liu et al. 2018).
      keypoints: keypoints per crop for 'spatial_softmax'.
      crop_conv_strides: strides of stage 2's conv layers (None: `conv_strides`). A spatial
        softmax wants a finer last feature map, e.g. (2, 1, 1).
      stage2_pose_input: stage 2 reads the current pose z through its MLP (the paper, Eq. 5).
        False drops z from stage 2's inputs (the crops and a^1 remain). With a weak visual
        signal a regressor that sees z and a^1 shrinks its estimate of the target towards
        where targets usually are given z, i.e. near z itself; in closed loop that pull can
        make the current pose a fixed point (the arm stalls).
      view_encoders: with several cameras, 'stacked' (the default: the views' images stacked
        along the colour channels into one CNN, early fusion, whose cost grows only in the
        first layer; stage 2's crops of a view that does not see the target are zeros),
        'shared' (one CNN encodes every view, as one batch) or 'separate' (a CNN per view).
        The default is the one whose 3-camera step stays within 2.5x a 1-camera step
        (`experiments/tools/benchmark.py --sections=views`: 1.4-1.7x, against 2.2-3.1x). 'shared' and 'separate'
        concatenate each view's features in the cameras' order (stage 2 first multiplies each
        by its view's mask). One camera uses one CNN in every case.
    """

    conv_channels: tuple[int, ...] = (32, 32, 32, 32)
    crop_conv_channels: tuple[int, ...] = (32, 32, 32)
    conv_strides: tuple[int, ...] = (2, 2, 2, 2)
    mlp_hidden: int = 64
    head_hidden: tuple[int, ...] = (256, 256)
    conv_impl: str = "auto"
    crop_encoder: str = "flatten"
    coord_channels: bool = False
    keypoints: int = 32
    crop_conv_strides: tuple[int, ...] | None = None
    stage2_pose_input: bool = True
    view_encoders: str = "stacked"

    def __post_init__(self) -> None:
        if self.view_encoders not in VIEW_ENCODERS:
            raise ConfigError("NetworkConfig", "view_encoders", f"must be one of {VIEW_ENCODERS}; got "
                             f"{self.view_encoders!r}.")
        if self.crop_encoder not in CROP_ENCODERS:
            raise ConfigError("NetworkConfig", "crop_encoder", f"must be one of {CROP_ENCODERS}; got "
                             f"{self.crop_encoder!r}.")
        if not isinstance(self.keypoints, int) or self.keypoints <= 0:
            raise ConfigError("NetworkConfig", "keypoints", f"must be a positive int; got {self.keypoints!r}.")
        if self.crop_conv_strides is not None and (
                len(self.crop_conv_strides) < len(self.crop_conv_channels)
                or any(int(v) <= 0 for v in self.crop_conv_strides)):
            raise ConfigError("NetworkConfig", "crop_conv_strides", "needs one positive stride per stage-2 "
                             f"conv layer; got {self.crop_conv_strides!r} for "
                             f"{len(self.crop_conv_channels)} layers.")
        if int(self.mlp_hidden) <= 0:
            raise ConfigError("NetworkConfig", "mlp_hidden", f"must be a positive int; got {self.mlp_hidden!r}.")
        if self.conv_impl not in CONV_IMPLS:
            raise ConfigError("NetworkConfig", "conv_impl", f"must be one of {CONV_IMPLS}; got "
                             f"{self.conv_impl!r}.")
        for name in ("conv_channels", "crop_conv_channels", "head_hidden"):
            val = getattr(self, name)
            if not val or any(int(c) <= 0 for c in val):
                raise ConfigError("NetworkConfig", name, f"must be non-empty positive ints; got {val!r}.")
        if int(self.mlp_hidden) <= 0:
            raise ConfigError("NetworkConfig", "mlp_hidden", f"must be a positive int; got {self.mlp_hidden!r}.")
        if any(int(s) <= 0 for s in self.conv_strides):
            raise ConfigError("NetworkConfig", "conv_strides", f"must be positive ints; got {self.conv_strides!r}.")
        if len(self.conv_strides) < max(len(self.conv_channels), len(self.crop_conv_channels)):
            raise ConfigError("NetworkConfig", "conv_strides", "needs one stride per conv layer; got "
                             f"{self.conv_strides!r} for {len(self.conv_channels)} layers.")


def resolve_conv_impl(impl: str, backend: str | None = None) -> str:
    """Maps 'auto' to a concrete conv implementation for `backend`; other names pass through.

    'auto' picks 'patches' on CPU (measured by experiments/tools/benchmark.py: im2col + matmul is
    faster than XLA's convolution on CPU for one seed, and far faster than the grouped
    convolution that vmapping over seeds produces) and 'xla' elsewhere (GPU/TPU: no
    measurement yet, so XLA's native convolution is kept).

    Args:
      impl: 'auto', 'xla' or 'patches'.
      backend: platform name ('cpu', 'gpu', 'tpu', ...); None means `jax.default_backend()`.

    Returns:
      'xla' or 'patches'.
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"`conv_impl` must be one of {CONV_IMPLS}; got {impl!r}.")
    if impl != "auto":
        return impl
    backend = jax.default_backend() if backend is None else backend
    return AUTO_CONV_IMPL.get(backend, "xla")


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


# Hand-written: on CPU, XLA's convolution (grouped under vmap) trained ~13x slower than im2col + matmul.
def conv2d_patches(x: jnp.ndarray, kernel: jnp.ndarray, stride: int) -> jnp.ndarray:
    """'SAME' 2-D convolution as im2col + matrix multiply (numerically equal to lax.conv).

    Args:
      x: [B, H, W, Cin] input.
      kernel: [k, k, Cin, Cout] HWIO kernel.
      stride: spatial stride.

    Returns:
      [B, H', W', Cout] output, H' = ceil(H / stride).
    """
    k = kernel.shape[0]
    oh, ph0, ph1 = _same_pads(x.shape[1], k, stride)
    ow, pw0, pw1 = _same_pads(x.shape[2], k, stride)
    xp = jnp.pad(x, ((0, 0), (ph0, ph1), (pw0, pw1), (0, 0)))
    cols = [
        xp[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
        for i in range(k)
        for j in range(k)
    ]
    patches = jnp.concatenate(cols, axis=-1)  # [B, oh, ow, k*k*Cin], (i, j, c) order = HWI
    return patches @ kernel.reshape(-1, kernel.shape[-1])


class Conv(nn.Module):
    """3x3 'SAME' convolution with a selectable implementation; params match `nn.Conv`.

    `impl` is 'auto', 'xla' or 'patches' (see `resolve_conv_impl`).
    """

    features: int
    stride: int
    impl: str = "xla"
    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        cin = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if resolve_conv_impl(self.impl) == "patches":
            y = conv2d_patches(x, kernel, self.stride)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


def coordinate_grid(height: int, width: int) -> jnp.ndarray:
    """[H, W, 2] pixel-centre coordinates (x, y), each spanning [-1, 1] across the image."""
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width * 2.0 - 1.0
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height * 2.0 - 1.0
    return jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)


class SpatialSoftmax(nn.Module):
    """Feature maps -> 2-D keypoints: E[(x, y)] under a softmax over each map's pixels.

    Input [B, H, W, C]; output [B, 2 * keypoints] (x then y of each keypoint, in [-1, 1]).
    """

    keypoints: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, h, w, _ = x.shape
        logits = nn.Dense(self.keypoints, name="to_keypoints")(x)  # a 1x1 conv
        log_temp = self.param("log_temperature", nn.initializers.zeros, ())
        attn = jax.nn.softmax(logits.reshape(b, h * w, self.keypoints) / jnp.exp(log_temp), axis=1)
        grid = coordinate_grid(h, w).reshape(h * w, 2)
        kp = jnp.einsum("bpk,pd->bkd", attn, grid)
        return kp.reshape(b, 2 * self.keypoints)


class CNN(nn.Module):
    """Conv stack with ReLU. Input: [B, H, W, 3] uint8 or float in [0, 1].

    Ends with the feature map flattened ('flatten') or a `SpatialSoftmax` ('spatial_softmax');
    `coords` appends two coordinate channels to the input (CoordConv).
    """

    channels: Sequence[int]
    strides: Sequence[int]
    impl: str = "xla"
    head: str = "flatten"
    coords: bool = False
    keypoints: int = 32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if x.dtype == jnp.uint8:
            x = x.astype(jnp.float32) / 255.0
        x = x - 0.5
        if self.coords:
            grid = jnp.broadcast_to(coordinate_grid(x.shape[1], x.shape[2]), x.shape[:3] + (2,))
            x = jnp.concatenate([x, grid.astype(x.dtype)], axis=-1)
        for c, s in zip(self.channels, self.strides):
            x = nn.relu(Conv(c, s, self.impl)(x))
        if self.head == "spatial_softmax":
            return SpatialSoftmax(self.keypoints)(x)
        return x.reshape(x.shape[0], -1)


class ConcatDense(nn.Module):
    """`nn.Dense` over the concatenation of several inputs, without forming it.

    The kernel [sum D_i, features] is split by rows and each input multiplied by its own
    block: x_0 @ W_0 + x_1 @ W_1 + ... + bias, equal to `nn.Dense` on `concatenate(inputs, -1)`
    up to float rounding, with the same parameters (names, shapes, initialisers: a checkpoint
    of either loads into the other). The inputs' leading dimensions broadcast, so an input that
    repeats along a leading axis (a state's features against N actions of that state) is
    multiplied once, not N times.
    """

    features: int

    @nn.compact
    def __call__(self, inputs: Sequence[jnp.ndarray]) -> jnp.ndarray:
        """Applies the layer.

        Args:
          inputs: arrays [..., D_i] whose leading dimensions broadcast against each other.

        Returns:
          [*broadcast leading dims, features].
        """
        sizes = [x.shape[-1] for x in inputs]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (sum(sizes), self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        y, start = None, 0
        for x, n in zip(inputs, sizes):
            part = jax.lax.dot_general(x, kernel[start:start + n], (((x.ndim - 1,), (0,)), ((), ())))
            y = part if y is None else y + part
            start += n
        return y + bias


class MLP(nn.Module):
    """Dense layers with ReLU; the last layer is activated only if `activate_final`.

    The input is one array [..., D], or a tuple of arrays [..., D_i] whose leading dimensions
    broadcast: the first layer then reads their concatenation through `ConcatDense` (same
    parameters as `nn.Dense` on the concatenated array), e.g. features [B, F] and actions
    [N, B, 7] give [N, B, out] with the features' share of the first layer computed once per
    state. Layers are named `Dense_0`, `Dense_1`, ... either way.
    """

    hidden: Sequence[int]
    activate_final: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray | tuple[jnp.ndarray, ...]) -> jnp.ndarray:
        for i, h in enumerate(self.hidden):
            layer = ConcatDense if i == 0 and isinstance(x, tuple) else nn.Dense
            x = layer(h, name=f"Dense_{i}")(x)
            if i < len(self.hidden) - 1 or self.activate_final:
                x = nn.relu(x)
        return x


def encode_views(x: jnp.ndarray, make: Callable[[str], nn.Module], name: str, how: str,
                 mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """A CNN's features of one camera's images, or of V cameras' (`NetworkConfig.view_encoders`).

    Call inside a compact module: `make(name)` builds the CNN. One camera is `make(name)(x)`,
    exactly. With V cameras: 'shared' encodes the [B * V] images as one batch with one CNN,
    'separate' gives view v its own CNN (`name`, then `name_view1`, ...), 'stacked' stacks the
    views along the channels of one CNN's input.

    Args:
      x: [B, H, W, C] images of one camera, or [B, V, H, W, C] of V.
      make: name -> the CNN module.
      name: the (first) CNN's name.
      how: 'shared', 'separate' or 'stacked'.
      mask: None, or [B, V] weights of each view's features (0 for a view that does not see);
        'stacked' has no per-view features (a masked view's crop is zeros already).

    Returns:
      [B, F] features, or [B, V * F] (view-major) for 'shared' and 'separate'.
    """
    if x.ndim == 4:
        return make(name)(x)
    b, v = x.shape[:2]
    if how == "stacked":  # [B, V, H, W, C] -> [B, H, W, V * C], view-major channels
        return make(name)(jnp.moveaxis(x, 1, 3).reshape(x.shape[:1] + x.shape[2:4] + (v * x.shape[-1],)))
    if how == "separate":
        feats = jnp.stack([make(name if i == 0 else f"{name}_view{i}")(x[:, i]) for i in range(v)], axis=1)
    else:
        feats = make(name)(x.reshape((b * v,) + x.shape[2:])).reshape(b, v, -1)
    if mask is not None:
        feats = feats * mask[..., None].astype(feats.dtype)
    return feats.reshape(b, -1)


class Stage1Encoder(nn.Module):
    """phi(o, z): 4-layer CNN over o (each view's, with several cameras), 2-layer MLP over z,
    concatenated."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, obs: Stage1Obs) -> jnp.ndarray:
        c = self.config
        img = encode_views(obs.image, lambda n: CNN(c.conv_channels, c.conv_strides, c.conv_impl, name=n),
                           "CNN_0", c.view_encoders)
        pose = MLP((c.mlp_hidden, c.mlp_hidden))(obs.pose)
        return jnp.concatenate([img, pose], axis=-1)


class Stage2Encoder(nn.Module):
    """phi(o^2, e^2, z, a^1): 3-layer CNNs over both crops (each view's, o^2's features times
    the view's mask, with several cameras), 2-layer MLPs over z and a^1."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, obs: Stage2Obs) -> jnp.ndarray:
        c = self.config
        strides = c.crop_conv_strides if c.crop_conv_strides is not None else c.conv_strides
        cnn = dict(channels=c.crop_conv_channels, strides=strides, impl=c.conv_impl,
                   head=c.crop_encoder, coords=c.coord_channels, keypoints=c.keypoints)
        how, mask = c.view_encoders, getattr(obs, "mask", None)
        crop = encode_views(obs.crop, lambda n: CNN(**cnn, name=n), "crop_cnn", how, mask)
        ee = encode_views(obs.ee_crop, lambda n: CNN(**cnn, name=n), "ee_cnn", how)
        tent = MLP((c.mlp_hidden, c.mlp_hidden), name="tentative_mlp")(obs.tentative)
        if not c.stage2_pose_input:
            return jnp.concatenate([crop, ee, tent], axis=-1)
        pose = MLP((c.mlp_hidden, c.mlp_hidden), name="pose_mlp")(obs.pose)
        return jnp.concatenate([crop, ee, pose, tent], axis=-1)


class DeterministicActor(nn.Module):
    """BC head: features -> tanh(MLP) action in (-1, 1)."""

    hidden: Sequence[int]

    @nn.compact
    def __call__(self, feat: jnp.ndarray) -> jnp.ndarray:
        return jnp.tanh(MLP(tuple(self.hidden) + (ACTION_DIM,), activate_final=False)(feat))


class GaussianActor(nn.Module):
    """CQL/SAC head: features -> (mean, log_std) of a Gaussian squashed by tanh."""

    hidden: Sequence[int]

    @nn.compact
    def __call__(self, feat: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        out = MLP(tuple(self.hidden) + (2 * ACTION_DIM,), activate_final=False)(feat)
        mean, log_std = jnp.split(out, 2, axis=-1)
        log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std


class TwinQ(nn.Module):
    """Two independent Q heads on concat(features, action).

    The concatenation is never formed (`MLP` on a tuple, `ConcatDense`): the first layer adds
    feat @ W_feat to action @ W_action, so features [B, F] against N sampled actions per state
    [N, B, 7] cost one [B, F] matmul, not N (CQL's regulariser evaluates 3N actions per state).
    """

    hidden: Sequence[int]

    @nn.compact
    def __call__(self, feat: jnp.ndarray, action: jnp.ndarray) -> jnp.ndarray:
        """Q values of both heads.

        Args:
          feat: [..., F] features.
          action: [..., 7] actions; the leading dimensions of feat and action broadcast
            (e.g. feat [B, F] with action [N, B, 7]).

        Returns:
          [2, *broadcast leading dims].
        """
        qs = [MLP(tuple(self.hidden) + (1,), activate_final=False, name=f"q{i}")((feat, action))[..., 0]
              for i in range(2)]
        return jnp.stack(qs, axis=0)


class Networks(NamedTuple):
    """Pure functions over the parameter dict `{'encoder', 'actor', ['critic']}`.

    `init` and `encode` take the images: stage 1's `obs.image` [B, H, W, 3], stage 2's
    `obs.crop` [B, S, S, 3] and `obs.ee_crop` [B, E, E, 3], each uint8 (0..255) or float in
    [0, 1]. Their dtype is checked at trace time (another dtype raises a TypeError, eager and
    under jit alike). A float image's values are checked only when they are concrete (eager
    calls, such as the usual `init` on an example batch): floats in 0..255 would otherwise
    read as frames 255 times too bright. Under jit/vmap/grad they are tracers; checking them
    there would need `checkify` around every caller or a host copy every training step, so
    the values are checked where data enters instead: `prepare_data` (uint8 frames),
    `transform_state` (crops scaled to [0, 1]) and `make_policy`'s act (uint8 frames).

    Attributes:
      init: (key, example_obs) -> params.
      encode: (params, obs [B, ...]) -> features [B, F].
      actor: (params, features [B, F]) -> action [B, 7] (BC) or (mean, log_std) [B, 7] each.
      critic: (params, features [..., F], action [..., 7]) -> q [2, ...] (None for BC); the
        leading dimensions broadcast (features [B, F] with actions [N, B, 7] -> [2, N, B]).
      stochastic: True for the tanh-Gaussian actor.
    """

    init: Callable[[jax.Array, Any], dict]
    encode: Callable[[dict, Any], jnp.ndarray]
    actor: Callable[[dict, jnp.ndarray], Any]
    critic: Callable[[dict, jnp.ndarray, jnp.ndarray], jnp.ndarray] | None
    stochastic: bool


_IMAGE_FIELDS = {1: ("image",), 2: ("crop", "ee_crop")}


def _check_images(obs: Any, stage: int) -> None:
    """The image fields of a stage's observation: dtype at trace time, float values when concrete."""
    kind = "Stage1Obs" if stage == 1 else "Stage2Obs"
    for field in _IMAGE_FIELDS[stage]:
        image = getattr(obs, field, None)
        if image is None:
            raise ValueError(f"`obs.{field}` is missing: stage-{stage} networks take a {kind} "
                             f"(fields {list(_IMAGE_FIELDS[stage])} among others); got "
                             f"{type(obs).__name__}.")
        _checks.check_image(f"obs.{field}", image)
        _checks.check_image_values(f"obs.{field}", image)


def make_networks(config: NetworkConfig, stage: int, algo: str) -> Networks:
    """Builds the networks of one stage.

    `config.conv_impl='auto'` is resolved here, for the default backend at call time.

    Args:
      config: sizes.
      stage: 1 (full image + pose) or 2 (crops + pose + tentative action).
      algo: 'bc' (deterministic actor) or 'cql' (tanh-Gaussian actor + twin Q).

    Returns:
      A `Networks` bundle of pure functions.
    """
    if stage not in (1, 2):
        raise ValueError(f"`stage` must be 1 or 2; got {stage!r}.")
    if algo not in ("bc", "cql"):
        raise ValueError(f"`algo` must be 'bc' or 'cql'; got {algo!r}.")
    config = dataclasses.replace(config, conv_impl=resolve_conv_impl(config.conv_impl))
    encoder = Stage1Encoder(config) if stage == 1 else Stage2Encoder(config)
    actor = DeterministicActor(config.head_hidden) if algo == "bc" else GaussianActor(config.head_hidden)
    critic = TwinQ(config.head_hidden) if algo == "cql" else None

    def init(key: jax.Array, obs: Any) -> dict:
        _check_images(obs, stage)
        k1, k2, k3 = jax.random.split(key, 3)
        enc_params = encoder.init(k1, obs)
        feat = encoder.apply(enc_params, obs)
        params = {"encoder": enc_params, "actor": actor.init(k2, feat)}
        if critic is not None:
            act = jnp.zeros(feat.shape[:-1] + (ACTION_DIM,), feat.dtype)
            params["critic"] = critic.init(k3, feat, act)
        return params

    def encode(params: dict, obs: Any) -> jnp.ndarray:
        _check_images(obs, stage)
        return encoder.apply(params["encoder"], obs)

    def actor_fn(params: dict, feat: jnp.ndarray) -> Any:
        return actor.apply(params["actor"], feat)

    critic_fn = None
    if critic is not None:
        def critic_fn(params: dict, feat: jnp.ndarray, action: jnp.ndarray) -> jnp.ndarray:
            return critic.apply(params["critic"], feat, action)

    return Networks(init=init, encode=encode, actor=actor_fn, critic=critic_fn,
                    stochastic=algo == "cql")


def tanh_gaussian_sample(
    key: jax.Array, mean: jnp.ndarray, log_std: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Reparameterised sample of tanh(N(mean, std)) and its log-probability.

    The change-of-variables term uses log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)),
    which is finite for every u (no log of a number rounded to zero).

    Args:
      key: PRNG key.
      mean: [..., 7] pre-tanh mean.
      log_std: [..., 7] pre-tanh log standard deviation.

    Returns:
      action [..., 7] in (-1, 1) and log_prob [...].
    """
    std = jnp.exp(log_std)
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    u = mean + std * noise
    log_normal = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    log_det = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(log_normal - log_det, axis=-1)


def deterministic_action(networks: Networks, params: dict, obs: Any) -> jnp.ndarray:
    """The policy's mode: the BC output, or tanh(mean) for the Gaussian actor. [B, 7]."""
    out = networks.actor(params, networks.encode(params, obs))
    return jnp.tanh(out[0]) if networks.stochastic else out
