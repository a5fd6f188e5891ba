"""Drawing particle systems into RGB frames with matplotlib (Agg, no display).

One figure is built per trajectory and its artists are updated frame by frame. 2-D scenes are
drawn in the x-y plane; 3-D scenes in a fixed perspective view with the world's up axis (y)
vertical on screen, i.e. world (x, y, z) -> plot (x, z, y). The axis limits cover the whole
trajectory, so the camera never moves.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Line3D, Line3DCollection, Poly3DCollection

from tphys.render.geometry import Scene, make_scene, to_numpy_trajectory, view_box

PARTICLE_COLOR = "tab:blue"
HANDLE_COLOR = "#d62728"  # red squares
SPRING_COLOR = "0.25"
CABLE_COLOR = "tab:brown"
SURFACE_COLOR = (0.12, 0.62, 0.75, 0.35)  # translucent cloth
SURFACE_EDGE_COLOR = (0.05, 0.35, 0.45, 0.6)
REFERENCE_COLOR = "0.55"
GROUND_COLOR = (0.82, 0.71, 0.55, 0.45)
SHADOW_COLOR = (0.0, 0.0, 0.0, 0.15)


class FrameRenderer:
    """Reusable figure drawing one configuration of a ``Scene`` per call.

    The static part (axes, ground, reference markers) is drawn once and kept as a bitmap; each
    frame restores it and draws only the moving artists (``blit=False`` redraws everything).

    Args:
        scene: validated drawing data (see ``tphys.render.geometry.make_scene``).
        low, high: [d] world corners (m) of the fixed camera box, from ``view_box``.
        size: (width, height) of the frames in pixels.
        dpi: figure resolution; only changes the size of fonts and markers relative to the frame.
        elev, azim: 3-D camera angles in degrees (ignored in 2-D).
        blit: reuse the static background between frames.
    """

    def __init__(
        self,
        scene: Scene,
        low: np.ndarray,
        high: np.ndarray,
        size: tuple[int, int] = (480, 480),
        dpi: int = 100,
        elev: float = 20.0,
        azim: float = -60.0,
        blit: bool = True,
    ):
        width, height = (int(v) for v in size)
        if width < 16 or height < 16:
            raise ValueError(f"frame size must be at least 16x16 pixels, got {size}")
        self.scene, self.size, self.blit = scene, (width, height), blit
        self.axes_order = list(scene.screen_axes)
        self.lows, self.highs = np.asarray(low)[self.axes_order], np.asarray(high)[self.axes_order]  # plot order
        self.spring_index = scene.edges[~scene.cable]
        self.cable_index = scene.edges[scene.cable]
        free = np.ones(scene.num_particles, dtype=bool)
        free[scene.handles] = False
        self.free_index = np.nonzero(free)[0]
        self.fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        self.title = self.fig.text(0.5, 0.975, "", ha="center", va="top", fontsize=10)
        if scene.dim == 2:
            self._build_2d()
        else:
            self._build_3d(elev, azim)
        # Moving artists in drawing order, leaving out the shapes the scene does not have (None).
        moving = (self.shadows, self.surface, self.springs, self.cables, self.particles, self.handle_marks)
        self.moving = [artist for artist in moving if artist is not None]
        for artist in [*self.moving, self.title]:
            artist.set_animated(blit)
        self._background = None

    # ------------------------------------------------------------------ 2-D
    def _build_2d(self) -> None:
        scene = self.scene
        ax = self.fig.add_axes((0.12, 0.08, 0.84, 0.82))
        ax.set_xlim(self.lows[0], self.highs[0])
        ax.set_ylim(self.lows[1], self.highs[1])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("x (m)", fontsize=8)
        ax.set_ylabel("y (m)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.25)
        if scene.ground is not None:
            ax.axhspan(self.lows[1], scene.ground, color=GROUND_COLOR, zorder=0)
            ax.axhline(scene.ground, color="0.4", lw=1.0, zorder=0.5)
        if scene.reference is not None:
            ref = scene.reference[:, self.axes_order]
            ax.plot(ref[:, 0], ref[:, 1], "o", mfc="none", mec=REFERENCE_COLOR, ms=9, alpha=0.6, zorder=1)
        self.shadows = None
        self.surface = self._add(
            ax, scene.triangles, PolyCollection, facecolors=[SURFACE_COLOR], edgecolors=[SURFACE_EDGE_COLOR], lw=0.6, zorder=2
        )
        self.springs = self._add(ax, self.spring_index, LineCollection, colors=SPRING_COLOR, lw=2.0, zorder=3)
        self.cables = self._add(ax, self.cable_index, LineCollection, colors=CABLE_COLOR, lw=1.2, linestyles="--", zorder=3)
        (self.particles,) = ax.plot([], [], "o", color=PARTICLE_COLOR, ms=7, zorder=4)
        (self.handle_marks,) = ax.plot([], [], "s", color=HANDLE_COLOR, mec="k", ms=10, zorder=5)
        self.ax = ax

    def _update_2d(self, p: np.ndarray) -> None:
        self._update_shapes(p)
        self.particles.set_data(p[self.free_index, 0], p[self.free_index, 1])
        self.handle_marks.set_data(p[self.scene.handles, 0], p[self.scene.handles, 1])

    # ------------------------------------------------------------------ 3-D
    def _build_3d(self, elev: float, azim: float) -> None:
        scene = self.scene
        # Explicit z-order instead of mplot3d's per-artist depth sort, so handles and particles
        # always show on top of the translucent cloth and the ground.
        ax = self.fig.add_axes((0.0, 0.0, 1.0, 0.94), projection="3d", computed_zorder=False)
        ax.set_proj_type("persp")
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlim(self.lows[0], self.highs[0])
        ax.set_ylim(self.lows[1], self.highs[1])
        ax.set_zlim(self.lows[2], self.highs[2])
        ax.set_box_aspect(tuple(self.highs - self.lows), zoom=0.9)
        names = "xyz"
        ax.set_xlabel(f"{names[self.axes_order[0]]} (m)", fontsize=8, labelpad=-2)
        ax.set_ylabel(f"{names[self.axes_order[1]]} (m)", fontsize=8, labelpad=-2)
        ax.set_zlabel(f"{names[self.axes_order[2]]} (m, up)", fontsize=8, labelpad=-2)
        ax.tick_params(labelsize=6, pad=0)
        x0, x1, y0, y1 = self.lows[0], self.highs[0], self.lows[1], self.highs[1]
        self.floor = self.lows[2] if scene.ground is None else scene.ground
        if scene.ground is not None:
            g = scene.ground
            quad = [[(x0, y0, g), (x1, y0, g), (x1, y1, g), (x0, y1, g)]]
            ground = Poly3DCollection(quad, facecolors=[GROUND_COLOR], edgecolors=["0.45"], lw=0.8, zorder=0)
            ax.add_collection3d(ground, autolim=False)
        if scene.reference is not None:
            ref = scene.reference[:, self.axes_order]
            ax.plot(ref[:, 0], ref[:, 1], ref[:, 2], "o", mfc="none", mec=REFERENCE_COLOR, ms=8, alpha=0.6, zorder=2)
        # Shadows: every particle projected straight down onto the ground (or the box floor).
        (self.shadows,) = ax.plot([], [], [], "o", color=SHADOW_COLOR, ms=4, mec="none", zorder=1)
        self.surface = self._add(
            ax, scene.triangles, Poly3DCollection, facecolors=[SURFACE_COLOR], edgecolors=[SURFACE_EDGE_COLOR], lw=0.5, zorder=3
        )
        # Over a cloth mesh the springs are bending and grip springs: drawn lighter than the mesh.
        spring_style = dict(lw=0.9, alpha=0.55) if len(scene.triangles) else dict(lw=1.6)
        self.springs = self._add(ax, self.spring_index, Line3DCollection, colors=SPRING_COLOR, zorder=4, **spring_style)
        self.cables = self._add(ax, self.cable_index, Line3DCollection, colors=CABLE_COLOR, lw=1.1, linestyles="--", zorder=4)
        (self.particles,) = ax.plot([], [], [], "o", color=PARTICLE_COLOR, ms=5, zorder=5)
        (self.handle_marks,) = ax.plot([], [], [], "s", color=HANDLE_COLOR, mec="k", ms=8, zorder=6)
        self.ax = ax

    def _update_3d(self, p: np.ndarray) -> None:
        self._update_shapes(p)
        free, handles = p[self.free_index], p[self.scene.handles]
        self.particles.set_data_3d(free[:, 0], free[:, 1], free[:, 2])
        self.handle_marks.set_data_3d(handles[:, 0], handles[:, 1], handles[:, 2])
        self.shadows.set_data_3d(p[:, 0], p[:, 1], np.full(len(p), self.floor))

    # ------------------------------------------------------------------ shared
    def _add(self, ax, index: np.ndarray, kind, **style):
        """A collection for the shapes ``index`` (triangles or edges), or None when there are none."""
        if len(index) == 0:
            return None
        collection = kind([np.zeros((index.shape[1], self.scene.dim))] * len(index), **style)
        if self.scene.dim == 3:
            ax.add_collection3d(collection, autolim=False)
        else:
            ax.add_collection(collection, autolim=False)
        return collection

    def _update_shapes(self, p: np.ndarray) -> None:
        if self.surface is not None:
            self.surface.set_verts(p[self.scene.triangles])
        if self.springs is not None:
            self.springs.set_segments(p[self.spring_index])
        if self.cables is not None:
            self.cables.set_segments(p[self.cable_index])

    # ------------------------------------------------------------------ frames
    def draw(self, x: np.ndarray, title: str = "") -> np.ndarray:
        """Draw world positions ``x`` [P, d] (m); returns an RGB frame [height, width, 3] uint8."""
        p = np.asarray(x, dtype=np.float64)[:, self.axes_order]
        if self.scene.dim == 2:
            self._update_2d(p)
        else:
            self._update_3d(p)
        self.title.set_text(title)
        if not self.blit:
            self.canvas.draw()
        else:
            if self._background is None:
                self.canvas.draw()  # static artists only: the moving ones are animated
                self._background = self.canvas.copy_from_bbox(self.fig.bbox)
            self.canvas.restore_region(self._background)
            for artist in self.moving:
                if hasattr(artist, "do_3d_projection") and not isinstance(artist, Line3D):
                    artist.do_3d_projection()  # collections project in Axes3D.draw, which blitting skips
                self.ax.draw_artist(artist)
            self.fig.draw_artist(self.title)
        rgba = np.asarray(self.canvas.buffer_rgba())
        width, height = self.size
        if rgba.shape[:2] != (height, width):  # figsize * dpi rounding; not expected for integer sizes
            raise RuntimeError(f"rendered frame has shape {rgba.shape[:2]}, expected {(height, width)}")
        return rgba[..., :3].copy()


def frame_title(step: int, dt: float | None = None, label: str | None = None) -> str:
    """Title text: step index, simulated time ``step * dt`` (s) when dt is given, then ``label``."""
    parts = [f"step {step}"]
    if dt is not None:
        parts.append(f"t = {step * dt:.3f} s")
    if label:
        parts.append(label)
    return "    ".join(parts)


def render_frames(
    geometry: dict,
    positions,
    *,
    dt: float | None = None,
    steps: Sequence[int] | None = None,
    labels: Sequence[str] | None = None,
    title: bool = True,
    size: tuple[int, int] = (480, 480),
    dpi: int = 100,
    elev: float = 20.0,
    azim: float = -60.0,
    blit: bool = True,
) -> list[np.ndarray]:
    """Render a trajectory of one env into RGB frames.

    Args:
        geometry: static drawing data, ``env.render_geometry()`` (see ``tphys.render.geometry``).
        positions: [T, P, d] particle positions (m) of one env, numpy array or torch tensor
            (detached and moved to the CPU here); d must equal ``geometry["dim"]``.
        dt: seconds per step; when given the title shows the time ``step * dt``.
        steps: [T] env step index of each frame for the title (default 0 .. T-1).
        labels: [T] extra text per frame appended to the title (e.g. the reward).
        title: False draws no title at all.
        size: (width, height) in pixels.
        dpi: figure resolution (relative size of text and markers).
        elev, azim: 3-D camera angles in degrees.
        blit: draw the static background once and only the moving artists per frame (faster);
            False redraws the whole figure every frame.

    Returns:
        T frames, each an RGB uint8 array [height, width, 3].

    Raises:
        ValueError: positions not [T, P, dim], non-finite, or inconsistent with the geometry.
    """
    x = to_numpy_trajectory(positions)
    scene = make_scene(geometry, x)
    num_frames = x.shape[0]
    steps = list(range(num_frames)) if steps is None else [int(s) for s in steps]
    if len(steps) != num_frames:
        raise ValueError(f"steps has {len(steps)} entries but positions have {num_frames} frames")
    if labels is not None and len(labels) != num_frames:
        raise ValueError(f"labels has {len(labels)} entries but positions have {num_frames} frames")
    low, high = view_box(scene, x)
    renderer = FrameRenderer(scene, low, high, size=size, dpi=dpi, elev=elev, azim=azim, blit=blit)
    frames = []
    for t in range(num_frames):
        text = frame_title(steps[t], dt, None if labels is None else labels[t]) if title else ""
        frames.append(renderer.draw(x[t], text))
    return frames
