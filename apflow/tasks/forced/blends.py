"""Joint PSF fits of blended sources.

Rubin's forced photometry measures each source alone after replacing its neighbours' footprints
with noise, which leaves the neighbours' light in its PSF wings. Here sources whose PSFs overlap
(closer than ``link_radius``, e.g. 3 FWHM, directly or through a chain) form a *blend group*, and
one linear least-squares solve per group gives every member's PSF flux:

``minimise sum over the union of the members' stamps (D - sum_k F_k P_k - b)^2``

(unweighted like Rubin's single-source fit, to which it reduces for an isolated source; ``b`` is
an optional flat background). The normal matrix ``A`` holds ``sum(P_i P_k)``, the right-hand side
``sum(P_i D)``, and the covariance of the fluxes is the sandwich ``A^-1 C A^-1`` with
``C = sum(P_i P_k V)``, exact for independent pixels. Groups are solved in batches of equal size
(``numpy.linalg`` on stacked matrices): no Python loop over sources or groups.

A group is not solved jointly -- its members fall back to single-source fits and are flagged --
when it has more than ``max_members`` members, or when its normal matrix (scaled to unit
diagonal) has a condition number above ``max_condition`` (sources practically on top of each
other: the split of their flux is undetermined).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .psf_flux import PsfSums, isolated_chi2, isolated_psf_flux


def blend_groups(x: np.ndarray, y: np.ndarray, link_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Friends-of-friends groups of sources closer than ``link_radius`` pixels.

    Returns
    -------
    labels, sizes : numpy.ndarray
        ``(n,)`` group label of each source and the size of its group.
    """
    n = x.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(link_radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    labels = labels.astype(np.int64)
    return labels, np.bincount(labels)[labels]


@dataclass(frozen=True)
class GroupStamps:
    """Stamps of the sources fitted jointly (``g`` of them, stamps ``(g, S, S)``).

    ``psf`` is already zero on bad pixels; ``data`` and ``variance`` are zero there too; ``xi,
    yi`` are the integer stamp centres and ``labels`` the blend group of each source.
    """

    psf: np.ndarray
    data: np.ndarray
    variance: np.ndarray
    good: np.ndarray
    xi: np.ndarray
    yi: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class GroupFit:
    """Joint-fit results per source of :class:`GroupStamps` (all ``(g,)``).

    ``singular`` marks groups that could not be solved; their other entries are NaN.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    background: np.ndarray
    chi2: np.ndarray
    singular: np.ndarray


@dataclass(frozen=True)
class PsfFit:
    """PSF fluxes of all measured sources (instrumental units; arrays ``(n,)``).

    ``n_blend`` is the size of each source's blend group (1 when isolated); ``too_large`` and
    ``singular`` mark members of groups that fell back to single-source fits.
    """

    flux: np.ndarray
    flux_err: np.ndarray
    background: np.ndarray
    chi2: np.ndarray
    n_blend: np.ndarray
    too_large: np.ndarray
    singular: np.ndarray


def psf_fluxes(
    sums: PsfSums,
    group_stamps: GroupStamps | None,
    joint: np.ndarray,
    sizes: np.ndarray,
    max_members: int,
    fit_background: bool = False,
    max_condition: float = 1e4,
) -> PsfFit:
    """Single-source fits for everyone, replaced by the joint fit for solvable blend groups.

    Parameters
    ----------
    sums : PsfSums
        Single-source sums of the ``n`` measured sources.
    group_stamps : GroupStamps or None
        Stamps of the sources with ``joint`` set, in order.
    joint : numpy.ndarray
        ``(n,)`` bool: member of a group of 2 to ``max_members`` sources.
    sizes : numpy.ndarray
        ``(n,)`` blend-group sizes.
    max_members : int
        Groups larger than this were not fitted jointly (flagged ``too_large``).
    fit_background, max_condition
        As in :func:`fit_groups`.
    """
    flux, err, background = isolated_psf_flux(sums, fit_background)
    chi2 = isolated_chi2(sums, flux, background)
    singular = np.zeros(flux.size, dtype=bool)
    if group_stamps is not None:
        members = np.flatnonzero(joint)
        fit = fit_groups(group_stamps, sums.subset(members), fit_background, max_condition)
        solved = ~fit.singular
        flux[members[solved]] = fit.flux[solved]
        err[members[solved]] = fit.flux_err[solved]
        background[members[solved]] = fit.background[solved]
        chi2[members[solved]] = fit.chi2[solved]
        singular[members] = fit.singular
    return PsfFit(flux, err, background, chi2, sizes, sizes > max_members, singular)


def fit_groups(
    stamps: GroupStamps,
    sums: PsfSums,
    fit_background: bool = False,
    max_condition: float = 1e4,
) -> GroupFit:
    """Solve every blend group of ``stamps`` jointly.

    Parameters
    ----------
    stamps : GroupStamps
        Members of groups of two or more sources (every member of each group present).
    sums : PsfSums
        The members' single-source sums (same order), the diagonal of each system.
    fit_background : bool
        Add a flat background over the union of the group's stamps.
    max_condition : float
        Largest accepted condition number of the unit-diagonal normal matrix.

    Returns
    -------
    GroupFit
    """
    g = stamps.labels.size
    half = stamps.psf.shape[1] // 2
    first, second = _overlapping_pairs(stamps.xi, stamps.yi, stamps.labels, half)
    # Directed pairs: source ``dst`` sees source ``src``'s model in its own stamp frame.
    dst = np.concatenate([first, second])
    src = np.concatenate([second, first])
    shifted, window = _shift_into(stamps.psf, src, dst, stamps.xi, stamps.yi, half)
    n_pairs = first.size
    cross_pp = (stamps.psf[dst[:n_pairs]] * shifted[:n_pairs]).sum(axis=(1, 2))
    cross_ppv = (
        stamps.psf[dst[:n_pairs]] * shifted[:n_pairs] * stamps.variance[dst[:n_pairs]]
    ).sum(axis=(1, 2))

    bg_n, bg_d, bg_v = sums.bg_n, sums.bg_d, sums.bg_v
    if fit_background:
        bg_n, bg_d, bg_v = _union_sums(stamps, dst, window)

    group_ids, group_of = np.unique(stamps.labels, return_inverse=True)
    group_size = np.bincount(group_of)
    rank = _rank_within_group(group_of)
    flux = np.full(g, np.nan)
    flux_err = np.full(g, np.nan)
    background = np.zeros(g) if not fit_background else np.full(g, np.nan)
    singular = np.zeros(g, dtype=bool)
    for m in np.unique(group_size):
        batch_groups = np.flatnonzero(group_size == m)
        slot = np.full(group_ids.size, -1)
        slot[batch_groups] = np.arange(batch_groups.size)
        members = np.flatnonzero(group_size[group_of] == m)
        size = m + int(fit_background)
        a = np.zeros((batch_groups.size, size, size))
        c = np.zeros_like(a)
        rhs = np.zeros((batch_groups.size, size))
        b_m, r_m = slot[group_of[members]], rank[members]
        a[b_m, r_m, r_m] = sums.pp[members]
        c[b_m, r_m, r_m] = sums.ppv[members]
        rhs[b_m, r_m] = sums.pd[members]
        in_batch = np.flatnonzero(group_size[group_of[first]] == m)
        b_p = slot[group_of[first[in_batch]]]
        r1, r2 = rank[first[in_batch]], rank[second[in_batch]]
        a[b_p, r1, r2] = a[b_p, r2, r1] = cross_pp[in_batch]
        c[b_p, r1, r2] = c[b_p, r2, r1] = cross_ppv[in_batch]
        if fit_background:
            a[b_m, r_m, m] = a[b_m, m, r_m] = sums.p[members]
            c[b_m, r_m, m] = c[b_m, m, r_m] = sums.pv[members]
            np.add.at(a[:, m, m], b_m, bg_n[members])
            np.add.at(c[:, m, m], b_m, bg_v[members])
            np.add.at(rhs[:, m], b_m, bg_d[members])
        solution, variance, ok = _solve_batch(a, c, rhs, max_condition)
        flux[members] = solution[b_m, r_m]
        flux_err[members] = np.sqrt(variance[b_m, r_m])
        if fit_background:
            background[members] = solution[b_m, m]
        singular[members] = ~ok[b_m]

    chi2 = _chi2(stamps, flux, background, shifted, src, dst)
    return GroupFit(flux, flux_err, background, chi2, singular)


def _overlapping_pairs(
    xi: np.ndarray, yi: np.ndarray, labels: np.ndarray, half: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs ``(i < k)`` of the same group whose square stamps overlap."""
    if xi.size < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    reach = 2 * half
    tree = cKDTree(np.column_stack([xi, yi]).astype(np.float64))
    pairs = tree.query_pairs(reach * np.sqrt(2.0) + 1e-9, output_type="ndarray")
    i, k = pairs[:, 0], pairs[:, 1]
    keep = (
        (labels[i] == labels[k])
        & (np.abs(xi[i] - xi[k]) <= reach)
        & (np.abs(yi[i] - yi[k]) <= reach)
    )
    return i[keep].astype(np.int64), k[keep].astype(np.int64)


def _shift_into(
    stack: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    xi: np.ndarray,
    yi: np.ndarray,
    half: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stamps of ``src`` resampled (by integer shifts) into the frames of ``dst``.

    Returns the shifted stamps ``(p, S, S)`` (zero outside ``src``'s stamp) and the bool window
    of ``dst``'s stamp pixels that ``src``'s stamp covers.
    """
    size = 2 * half + 1
    grid = np.arange(size)
    rows = grid + (yi[dst] - yi[src])[:, None]
    cols = grid + (xi[dst] - xi[src])[:, None]
    row_ok = (rows >= 0) & (rows < size)
    col_ok = (cols >= 0) & (cols < size)
    window = row_ok[:, :, None] & col_ok[:, None, :]
    shifted = stack[
        src[:, None, None],
        np.clip(rows, 0, size - 1)[:, :, None],
        np.clip(cols, 0, size - 1)[:, None, :],
    ]
    return np.where(window, shifted, 0.0), window


def _union_sums(
    stamps: GroupStamps, dst: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background sums over the union of each group's stamps, split among the members.

    A pixel covered by ``c`` stamps of the group counts ``1 / c`` in each, so the members' sums
    add up to the union's.
    """
    coverage = np.ones(stamps.psf.shape)
    np.add.at(coverage, dst, window.astype(np.float64))
    weight = np.where(stamps.good, 1.0 / coverage, 0.0)
    axes = (1, 2)
    return (
        weight.sum(axis=axes),
        (weight * stamps.data).sum(axis=axes),
        (weight * stamps.variance).sum(axis=axes),
    )


def _rank_within_group(group_of: np.ndarray) -> np.ndarray:
    """Position (0, 1, ...) of each source among the members of its group."""
    order = np.argsort(group_of, kind="stable")
    sorted_groups = group_of[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    first_of = np.repeat(starts, np.diff(np.r_[starts, order.size]))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - first_of
    return rank


def _solve_batch(
    a: np.ndarray, c: np.ndarray, rhs: np.ndarray, max_condition: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve stacked normal equations; return solution, diag(A^-1 C A^-1) and an ok mask."""
    diag = np.sqrt(np.abs(np.diagonal(a, axis1=1, axis2=2)))
    usable = np.all(diag > 0, axis=1) & np.all(np.isfinite(a), axis=(1, 2))
    usable &= np.all(np.isfinite(rhs), axis=1)
    scale = np.where(diag > 0, 1.0 / np.where(diag > 0, diag, 1.0), 0.0)
    # Scaling to a unit diagonal makes the condition number measure degeneracy, not units.
    a_unit = a * scale[:, :, None] * scale[:, None, :]
    cond = np.full(a.shape[0], np.inf)
    if usable.any():
        cond[usable] = np.linalg.cond(a_unit[usable])
    ok = usable & (cond < max_condition)
    solution = np.full(rhs.shape, np.nan)
    variance = np.full(rhs.shape, np.nan)
    if ok.any():
        inv = np.linalg.inv(a[ok])
        solution[ok] = np.einsum("gij,gj->gi", inv, rhs[ok])
        variance[ok] = np.einsum("gij,gjk,gik->gi", inv, c[ok], inv)
    return solution, variance, ok


def _chi2(
    stamps: GroupStamps,
    flux: np.ndarray,
    background: np.ndarray,
    shifted: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
) -> np.ndarray:
    """``sum((D - model)^2 / V)`` over each member's good pixels, with the neighbours' light."""
    model = flux[:, None, None] * stamps.psf
    np.add.at(model, dst, flux[src][:, None, None] * shifted)
    model += background[:, None, None]
    residual = stamps.data - model
    weight = stamps.good & (stamps.variance > 0)
    inv_v = np.where(weight, 1.0 / np.where(weight, stamps.variance, 1.0), 0.0)
    return (residual * residual * inv_v).sum(axis=(1, 2))
