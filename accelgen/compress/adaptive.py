"""Output-error-aware weight rounding for low bit widths ("adaptive" rounding).

Rounding each weight to its nearest level minimises the error of the *weights*; what matters is
the error of the layer's *outputs* on real inputs. For a layer computing ``y = W x`` over the
calibration inputs X, the output error of a quantized row ``q`` is ``(w - q) H (w - q)^T`` with
``H = X^T X``. Adaptive rounding (the optimal-brain-quantization / GPTQ construction) quantizes
the input positions one at a time and moves the error of each into the positions not yet
quantized, along the direction H says is cheapest: with ``U`` the upper Cholesky factor of
``H^-1``, after quantizing position ``i`` every row is corrected by
``-(w_i - q_i) / U_ii * U_i,(i+1)..``. Positions are visited in order of falling ``H_ii`` (the
most active inputs first, while there is most freedom left to absorb their error).

Rows (output channels) are independent given H, so each row's fractional length is chosen
afterwards among the neighbours of its least-weight-error one, by the output error each gives;
and a bias correction moves the mean output error ``(w - q) . E[x]`` into the bias (Nagel et al.,
"Data-free quantization", applied here with data).

Grouped and depthwise convolutions keep one H per group (a depthwise layer: one small
``kh*kw`` square matrix per channel); everything is vectorised over groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accelgen import reference
from accelgen.ir import Conv2d, Dense, Graph, GraphInput
from accelgen.kernels import pad_hw, window_taps

DAMPING = 0.01  # of the mean diagonal of H, added to it: keeps H invertible, as GPTQ does
_CHUNK_ELEMENTS = 1 << 24  # bound on the im2col block built at once


@dataclass
class InputMoments:
    """Moments of one weighted layer's input columns, per group, over the calibration data.

    With X the float model's input columns and X^ the quantized model's (the same positions,
    computed by the layers already quantized): `gram` (G, K, K) = X^T X^, `cross` (G, K, K) =
    X^T X, `total` / `total_q` (G, K) the column sums of X and X^, `count` the number of
    positions. K is a group's weight row length (kh*kw*C/G in the weight's (tap, channel)
    order, or the flattened input of a Dense layer).
    """

    gram: np.ndarray
    cross: np.ndarray
    total: np.ndarray
    total_q: np.ndarray
    count: int = 0

    @classmethod
    def of(cls, layer: Conv2d | Dense, x: np.ndarray, x_q: np.ndarray) -> InputMoments:
        """The moments of float inputs `x` and quantized inputs `x_q` (both real, N,H,W,C)."""
        m = None
        per_image = max(1, int(np.prod(x.shape[1:])) * _taps(layer))
        step = max(1, _CHUNK_ELEMENTS // per_image)
        for start in range(0, x.shape[0], step):
            cols = _columns(layer, x[start : start + step])
            cols_q = _columns(layer, x_q[start : start + step])
            if m is None:
                g, _, k = cols.shape
                m = cls(*(np.zeros((g, k, k)) for _ in range(2)),
                        *(np.zeros((g, k)) for _ in range(2)))
            tq = cols_q.transpose(0, 2, 1)
            m.gram += np.matmul(tq, cols_q)
            m.cross += np.matmul(tq, cols)
            m.total += cols.sum(axis=1)
            m.total_q += cols_q.sum(axis=1)
            m.count += cols.shape[1]
        assert m is not None
        return m


def _columns(layer: Conv2d | Dense, x: np.ndarray) -> np.ndarray:
    """The layer's input as (G, P, K) rows, each the inputs one output position multiplies."""
    if isinstance(layer, Dense):
        return x.reshape(1, x.shape[0], -1).astype(np.float64)
    oh, ow, _ = layer.out_shape
    xp = pad_hw(x, layer.padding, 0.0)
    taps = [xp[:, r, c, :] for r, c in window_taps(layer.kernel, layer.stride, layer.dilation,
                                                  oh, ow)]
    cols = np.stack(taps, axis=3)  # (N, OH, OW, T, C)
    g = layer.groups
    cg = layer.in_channels // g
    p = cols.shape[0] * oh * ow
    cols = cols.reshape(p, len(taps), g, cg).transpose(2, 0, 1, 3)
    return cols.reshape(g, p, len(taps) * cg).astype(np.float64)


def float_inputs(
    graph: Graph, gi: GraphInput, data: np.ndarray, tensors: set[str], batch: int
) -> dict[str, np.ndarray]:
    """The float model's values of `tensors` over `data` (IR layout, float32)."""
    parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}

    def observe(name: str, x: np.ndarray) -> None:
        if name in parts:
            parts[name].append(np.array(x, np.float32))

    for start in range(0, len(data), batch):
        x = reference.prepare_input(gi, data[start : start + batch])
        reference.run_ir(graph, {gi.tensor: x}, observe=observe)
    return {t: np.concatenate(p) for t, p in parts.items()}


def _taps(layer: Conv2d | Dense) -> int:
    return 1 if isinstance(layer, Dense) else layer.kernel[0] * layer.kernel[1]


def _inverse_factor(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Damped H per group, and the upper Cholesky factor of its inverse."""
    h = gram.copy()
    k = h.shape[-1]
    diag = np.einsum("gii->gi", h)
    dead = diag <= 0
    idx = np.arange(k)
    h[:, idx, idx] += np.where(dead, 1.0, 0.0)
    mean_diag = np.maximum(np.einsum("gii->gi", h).mean(axis=1), 1e-12)
    h[:, idx, idx] += DAMPING * mean_diag[:, None]
    inv = np.linalg.inv(h)
    inv = 0.5 * (inv + inv.transpose(0, 2, 1))
    upper = np.linalg.cholesky(inv).transpose(0, 2, 1)
    return h, upper


def _round_rows(
    w: np.ndarray, fracs: np.ndarray, qmax: int, upper: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """GPTQ over (G, R, K) weights with per-row fractional lengths (G, R); integer result."""
    g_idx = np.arange(w.shape[0])[:, None]
    k = w.shape[2]
    # visit positions in `order`: permute W's columns and U's rows/columns alike
    wp = np.take_along_axis(w, order[:, None, :], axis=2).copy()
    up = upper[g_idx[:, :, None], order[:, :, None], order[:, None, :]]
    scale = np.exp2(fracs.astype(np.float64))  # (G, R)
    q = np.empty_like(wp)
    for i in range(k):
        col = wp[:, :, i]
        qi = np.clip(np.floor(col * scale + 0.5), -qmax - 1, qmax)
        q[:, :, i] = qi
        err = (col - qi / scale) / up[:, i, i][:, None]
        if i + 1 < k:
            wp[:, :, i + 1 :] -= err[:, :, None] * up[:, None, i, i + 1 :]
    out = np.empty_like(q)
    np.put_along_axis(out, np.broadcast_to(order[:, None, :], q.shape), q, axis=2)
    return out


def round_weights(
    weight: np.ndarray, groups: int, bits: int, fracs: np.ndarray, moments: InputMoments,
    max_frac: np.ndarray | int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Adaptive rounding of one layer's float weights (C_out, ...) with `groups` groups.

    `fracs` are the per-row fractional lengths of least weight error; each row tries those
    -1..+1 (never above `max_frac`) and keeps the one whose output error over the calibration
    inputs is least. Returns the integer weights, their fractional lengths, and the per-row
    bias correction (float, at the output's real scale) to add to the layer's bias.
    """
    c_out = weight.shape[0]
    qmax = (1 << (bits - 1)) - 1
    w_float = weight.reshape(groups, c_out // groups, -1).astype(np.float64)
    # the bias correction takes out the mean output error, so what rounding must minimise is
    # the error about the mean: centred second moments
    n = max(moments.count, 1)
    mean, mean_q = moments.total / n, moments.total_q / n
    gram = moments.gram - n * mean_q[:, :, None] * mean_q[:, None, :]
    cross = moments.cross - n * mean_q[:, :, None] * mean[:, None, :]
    h, upper = _inverse_factor(gram)
    # the rows that, on the quantized inputs, best reproduce the float layer on the float inputs
    w = np.matmul(np.matmul(w_float, cross.transpose(0, 2, 1)), np.linalg.inv(h))
    order = np.argsort(-np.einsum("gii->gi", gram), axis=1, kind="stable")
    base = fracs.reshape(groups, -1).astype(np.int64)
    cap = np.broadcast_to(np.asarray(max_frac, np.int64), (c_out,)).reshape(groups, -1)
    best_q = best_f = best_err = None
    for delta in (-1, 0, 1):
        f = np.minimum(base + delta, cap)
        q = _round_rows(w, f, qmax, upper, order)
        diff = w - q * np.exp2(-f.astype(np.float64))[:, :, None]
        err = np.einsum("grk,gkl,grl->gr", diff, h, diff)
        if best_err is None:
            best_q, best_f, best_err = q, f, err
            continue
        better = err < best_err
        best_q = np.where(better[:, :, None], q, best_q)
        best_f = np.where(better, f, best_f)
        best_err = np.where(better, err, best_err)
    assert best_q is not None and best_f is not None
    q_real = best_q * np.exp2(-best_f.astype(np.float64))[:, :, None]
    correction = (np.einsum("grk,gk->gr", w_float, mean)
                  - np.einsum("grk,gk->gr", q_real, mean_q)).reshape(c_out)
    return (best_q.astype(np.int64).reshape(weight.shape), best_f.reshape(c_out), correction)
