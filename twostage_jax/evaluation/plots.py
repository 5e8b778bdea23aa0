"""Plots for the launcher: success bars (paper Fig. 3 style), learning curves, rollout frames,
and one keyframe's crops in every camera."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from twostage_jax._io import atomic_open  # noqa: E402
from twostage_jax.actions import action_to_pose  # noqa: E402
from twostage_jax.geometry import project_points  # noqa: E402
from twostage_jax.evaluation.report import EvalResults  # noqa: E402



def save_figure(fig: Any, path: Path) -> None:
    """Writes a matplotlib figure to `path` (atomically; the format from its suffix) and closes it."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=path.suffix.lstrip("."), dpi=120, bbox_inches="tight")
    plt.close(fig)


def success_bars(results: EvalResults, path: Path) -> None:
    """Bar plot of mean success with bootstrap-interval error bars, one bar per policy."""
    modes = list(results.modes)
    means = [results.modes[m].mean for m in modes]
    err = np.array([[results.modes[m].mean - results.modes[m].ci_low for m in modes],
                    [results.modes[m].ci_high - results.modes[m].mean for m in modes]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    algo = results.algo.upper()
    names = [f"{algo}(1)" if m == "stage1" else f"{algo} two-stage" for m in modes]
    ax.bar(names, means, yerr=err, capsize=6, color=["#9aa9c4", "#2f5597"][: len(modes)])
    for i, m in enumerate(modes):
        ax.scatter([i] * len(results.modes[m].per_seed), results.modes[m].per_seed,
                   color="k", s=10, zorder=3)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success probability")
    ax.set_title(f"{results.task} ({results.num_seeds} seeds x {results.episodes_per_seed} ep.)",
                 fontsize=9)
    save_figure(fig, path)


def learning_curves(stage_dirs: list[Path], path: Path) -> None:
    """Training loss per seed against step, one panel per stage directory (its metrics.jsonl)."""
    fig, axes = plt.subplots(1, len(stage_dirs), figsize=(4 * len(stage_dirs), 3.2), squeeze=False)
    for ax, directory in zip(axes[0], stage_dirs):
        name = Path(directory).name
        f = Path(directory) / "metrics.jsonl"
        if not f.exists():
            ax.set_title(f"{name}: no metrics")
            continue
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        key = "bc_loss" if rows and "bc_loss" in rows[0] else "critic_loss"
        for seed in sorted({r["seed"] for r in rows}):
            pts = [(r["step"], r[key]) for r in rows if r["seed"] == seed]
            ax.plot(*zip(*pts), label=f"seed {seed}", lw=1)
        ax.set_xlabel("update step")
        ax.set_ylabel(key)
        ax.set_yscale("log" if key == "bc_loss" else "linear")
        ax.set_title(name)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def rollout_frames(episode: Any, camera: Any, workspace: Any, path: Path, scale: int = 3) -> None:
    """A strip of rollout frames with the tentative (red) and executed (green) positions drawn.

    Also writes an animated GIF beside the PNG. With several cameras, the first camera's frames
    are drawn (its pose as `camera` holds it).
    """
    if np.ndim(camera.intrinsics) == 3:  # several cameras: the first
        camera = jax.tree_util.tree_map(lambda x: x[0], camera)
    frames = []
    for t, img in enumerate(episode.frames):
        img = img[0] if np.ndim(img) == 4 else img
        im = Image.fromarray(np.asarray(img)).resize((img.shape[1] * scale, img.shape[0] * scale),
                                                      Image.NEAREST)
        draw = ImageDraw.Draw(im)
        if t < len(episode.actions):
            for action, color in ((episode.tentative[t], (230, 40, 40)), (episode.actions[t], (40, 220, 60))):
                pos, _, _ = action_to_pose(np.asarray(action, np.float32), workspace)
                uv, depth = project_points(camera, pos)
                u, v = float(uv[0]) * scale, float(uv[1]) * scale
                if float(depth) > 0:
                    draw.ellipse([u - 5, v - 5, u + 5, v + 5], outline=color, width=2)
        draw.text((4, 2), f"t={t}", fill=(255, 255, 255))
        frames.append(im)
    if not frames:
        return
    w, h = frames[0].size
    strip = Image.new("RGB", (w * len(frames), h))
    for i, f in enumerate(frames):
        strip.paste(f, (i * w, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        strip.save(f, format="PNG")
    with atomic_open(path.with_suffix(".gif"), "wb") as f:
        frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:], duration=700, loop=0)


def view_crops(images: Any, cameras: Any, workspace: Any, tentative: Any, executed: Any, crops: Any,
               path: Path, names: Any = None, scale: int = 2) -> None:
    """One keyframe in every camera: each view with the tentative (red) and executed (green)
    positions drawn, above the stage-2 crop of that view (zeros where the view does not see
    the tentative position).

    Args:
      images: [V, H, W, 3] uint8 frames of one instant.
      cameras: the V cameras (intrinsics [V, 3, 3], cam_to_world [V, 4, 4]).
      workspace: the action space's bounds.
      tentative, executed: [7] actions a^1 and the composed action.
      crops: [V, S, S, 3] float crops in [0, 1] (`Stage2Obs.crop`).
      path: the PNG to write (atomically).
      names: V titles (default: view 0, 1, ...).
      scale: pixels per image pixel in the figure.
    """
    images, crops = np.asarray(images), np.asarray(crops)
    views = images.shape[0]
    names = list(names) if names is not None else [f"view {v}" for v in range(views)]
    fig, axes = plt.subplots(2, views, figsize=(2.4 * views, 4.6), squeeze=False)
    for v in range(views):
        cam = jax.tree_util.tree_map(lambda x, v=v: np.asarray(x)[v], cameras)
        im = Image.fromarray(images[v]).resize((images.shape[2] * scale, images.shape[1] * scale), Image.NEAREST)
        draw = ImageDraw.Draw(im)
        for action, color in ((tentative, (230, 40, 40)), (executed, (40, 220, 60))):
            pos, _, _ = action_to_pose(np.asarray(action, np.float32), workspace)
            uv, depth = project_points(cam, pos)
            if float(depth) > 0:
                u, w = float(uv[0]) * scale, float(uv[1]) * scale
                draw.ellipse([u - 5, w - 5, u + 5, w + 5], outline=color, width=2)
        axes[0, v].imshow(im)
        axes[0, v].set_title(names[v], fontsize=9)
        axes[1, v].imshow(np.clip(crops[v], 0.0, 1.0), interpolation="nearest")
        axes[1, v].set_title("stage-2 crop", fontsize=8)
        for ax in axes[:, v]:
            ax.set_xticks([])
            ax.set_yticks([])
    save_figure(fig, path)
