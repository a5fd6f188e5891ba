"""Checking and normalising the inputs of the renderer: a geometry dict and a trajectory.

The geometry dict is what ``PayloadEnv.render_geometry()`` returns:
    dim        2 or 3
    up_axis    index of the vertical world axis (y = 1 in tphys)
    edges      [[i, j], ...] particle index pairs of springs and cables
    cable      [bool, ...] per edge, True for a cable (tension-only spring)
    triangles  [[i, j, k], ...] cloth triangles
    handles    [i, ...] indices of the kinematic handles
    ground     height (m) of the table plane along ``up_axis``, or None
    reference  [P][d] target configuration (m)
Keys other than these are ignored. Only ``dim`` is required; the lists default to empty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scene:
    """Validated static drawing data; all indices are < ``num_particles``.

    Attributes:
        dim: 2 or 3 world dimensions.
        up_axis: world axis drawn vertically.
        edges: [E, 2] int particle index pairs.
        cable: [E] bool, True where the edge is a cable.
        triangles: [F, 3] int particle indices.
        handles: [H] int particle indices of the handles.
        ground: table height (m) along ``up_axis``, or None.
        reference: [P, d] float target configuration (m), or None.
        num_particles: P.
    """

    dim: int
    up_axis: int
    edges: np.ndarray
    cable: np.ndarray
    triangles: np.ndarray
    handles: np.ndarray
    ground: float | None
    reference: np.ndarray | None
    num_particles: int

    @property
    def screen_axes(self) -> tuple[int, ...]:
        """World axes in plot order: (horizontal, up) in 2-D, (horizontal, depth, up) in 3-D.

        With y up this maps world (x, y) -> plot (x, y) and world (x, y, z) -> plot (x, z, y).
        """
        others = [a for a in range(self.dim) if a != self.up_axis]
        return (*others, self.up_axis)


def to_numpy_trajectory(positions) -> np.ndarray:
    """[T, P, d] float64 numpy copy of a tensor or array (detached, on the CPU)."""
    if hasattr(positions, "detach"):
        positions = positions.detach().cpu().numpy()
    return np.array(positions, dtype=np.float64)


def make_scene(geometry: dict, positions: np.ndarray) -> Scene:
    """Check ``geometry`` against ``positions`` [T, P, d] and return a ``Scene``.

    Raises ValueError with the offending key or shape on any inconsistency.
    """
    if not isinstance(geometry, dict):
        raise ValueError(f"geometry must be a dict as returned by env.render_geometry(), got {type(geometry).__name__}")
    dim = geometry.get("dim")
    if dim not in (2, 3):
        raise ValueError(f"geometry['dim'] must be 2 or 3, got {dim!r}")
    if positions.ndim != 3:
        raise ValueError(f"positions must have shape [T, P, {dim}] (steps, particles, dims) for one env, got shape {positions.shape}")
    num_steps, num_particles, d = positions.shape
    if d != dim:
        raise ValueError(f"positions has last dimension {d} but the geometry is {dim}-D: expected shape [T, P, {dim}]")
    if num_steps == 0:
        raise ValueError("positions has no time steps (T = 0)")
    if not np.isfinite(positions).all():
        bad = sorted(set(np.nonzero(~np.isfinite(positions))[0].tolist()))
        raise ValueError(f"positions contain NaN/inf at time indices {bad[:20]}")
    up_axis = int(geometry.get("up_axis", 1))
    if not 0 <= up_axis < dim:
        raise ValueError(f"geometry['up_axis'] = {up_axis} is not an axis of a {dim}-D scene")

    reference = _entry(geometry, "reference")
    if len(reference) > 0:
        reference = np.asarray(reference, dtype=np.float64)
        if reference.shape != (num_particles, dim):
            raise ValueError(
                f"positions have {num_particles} particles but geometry['reference'] has shape {reference.shape}, "
                f"expected ({num_particles}, {dim}): are the positions and the geometry from the same env?"
            )
    else:
        reference = None
    edges = _index_array(_entry(geometry, "edges"), 2, "edges", num_particles)
    cable = np.asarray(_entry(geometry, "cable", [False] * len(edges)), dtype=bool).reshape(-1)
    if len(cable) != len(edges):
        raise ValueError(f"geometry['cable'] has {len(cable)} entries but there are {len(edges)} edges")
    triangles = _index_array(_entry(geometry, "triangles"), 3, "triangles", num_particles)
    handles = _index_array(_entry(geometry, "handles"), None, "handles", num_particles)

    ground = geometry.get("ground")
    return Scene(
        dim=dim,
        up_axis=up_axis,
        edges=edges,
        cable=cable,
        triangles=triangles,
        handles=handles,
        ground=None if ground is None else float(ground),
        reference=reference,
        num_particles=num_particles,
    )


def view_box(
    scene: Scene, positions: np.ndarray, margin: float = 0.08, min_span: float = 0.2, min_ratio: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed camera box over the whole trajectory, the reference and the ground height.

    Every axis keeps the same scale (metres per pixel); only the box's side lengths differ.

    Args:
        positions: [T, P, d] world positions (m).
        margin: fraction of the largest side added on each side of every axis.
        min_span: smallest side length (m), so a motionless scene is not zoomed to a point.
        min_ratio: smallest side as a fraction of the largest, so the box never turns flat.

    Returns:
        low [d] and high [d] world corners (m) of a box containing everything.
    """
    points = positions.reshape(-1, scene.dim)
    if scene.reference is not None:
        points = np.concatenate([points, scene.reference], 0)
    low, high = points.min(0), points.max(0)
    if scene.ground is not None:
        low[scene.up_axis] = min(low[scene.up_axis], scene.ground)
        high[scene.up_axis] = max(high[scene.up_axis], scene.ground)
    centre, span = (low + high) / 2, high - low
    largest = max(float(span.max()), min_span)
    half = np.maximum(span, min_ratio * largest) / 2 + margin * largest
    return centre - half, centre + half


def _entry(geometry: dict, key: str, default=()):
    """geometry[key], or ``default`` when it is missing or None (lists, arrays and tensors pass through)."""
    value = geometry.get(key)
    if value is None:
        return default
    return value.tolist() if hasattr(value, "tolist") else value


def _index_array(value, width: int | None, key: str, num_particles: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.int64)
    if width is None:
        array = array.reshape(-1)
    elif array.size == 0:
        array = array.reshape(0, width)
    elif array.ndim != 2 or array.shape[1] != width:
        raise ValueError(f"geometry[{key!r}] must be a list of {width}-element index lists, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= num_particles):
        raise ValueError(
            f"geometry[{key!r}] indexes particle {int(array.max()) if array.max() >= num_particles else int(array.min())} "
            f"but positions have {num_particles} particles"
        )
    return array
