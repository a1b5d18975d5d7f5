"""log p(x) as the number of importance samples K grows, beside AIS: has the estimate settled?

Importance sampling with the guide gives a lower bound that rises with K towards log p(x);
where it still rises at the largest K (or where AIS lies above it), the estimate has not
settled and compares the proposal as much as the model.
"""

from __future__ import annotations

import math

from lvmkit.core.checks import check_count
from lvmkit.diagnostics.plots import new_figure
from lvmkit.inference import LogLikelihood, ais, log_likelihood


def sample_counts(largest: int) -> list[int]:
    """1, 10, 100, ... below ``largest``, then ``largest``.

    Parameters
    ----------
    largest : int

    Returns
    -------
    list of int
    """
    check_count("largest", largest)
    counts = [10**i for i in range(int(math.log10(largest)) + 1) if 10**i < largest]
    return counts + [largest]


def convergence(
    model,
    guide,
    data,
    *,
    ks: tuple[int, ...] | list[int] = (1, 10, 100, 1000),
    ais_steps: int | None = None,
    ais_chains: int = 16,
    batch_size: int = 128,
    discrete: bool | None = None,
    seed: int = 0,
    device=None,
    progress: bool = False,
    params=None,
) -> list[LogLikelihood]:
    """log p(x) of ``data`` by importance sampling with ``guide`` for each K in ``ks``, then, if
    ``ais_steps``, by AIS from the guide with ``ais_chains`` chains. Cost: sum(ks) draws per
    datapoint, plus AIS's (about ais_chains x ais_steps x 6 gradient evaluations).

    Parameters
    ----------
    model, guide : callable
        A Pyro model and guide, as for ``lvmkit.log_likelihood``.
    data : Tensor of shape (N, ...), tuple of such tensors, or Dataset
        The data scored.
    ks : sequence of int
        Importance samples per datapoint, one estimate each.
    ais_steps : int or None
        AIS temperatures; None leaves AIS out.
    ais_chains : int
        AIS chains per datapoint.
    batch_size, discrete, seed, device, progress, params
        As for ``lvmkit.log_likelihood``.

    Returns
    -------
    list of LogLikelihood
        One per K, in order, then AIS's: each with ``values`` (N,) in nats, both standard errors,
        bits/dim where defined, and its seconds.
    """
    common = dict(batch_size=batch_size, discrete=discrete, seed=seed, device=device, params=params)
    rows = [
        log_likelihood(model, guide, data, num_samples=k, progress=progress, **common) for k in ks
    ]
    if ais_steps:
        rows.append(
            ais(
                model,
                data,
                guide=guide,
                num_samples=ais_chains,
                steps=ais_steps,
                progress=progress,
                **common,
            )
        )
    return rows


def label(ll: LogLikelihood) -> str:
    """How an estimate was made, in a few words: "IS K=100", "AIS 16x100", "exact"."""
    if ll.method == "ais":
        return f"AIS {ll.num_samples}x{ll.steps}"
    named = {"exact": "exact", "bound": "lower bound", "dequantized": "dequantized"}
    return named.get(ll.method, f"IS K={ll.num_samples}")


def convergence_plot(rows: list[LogLikelihood]):
    """log p(x) (bits/dim where defined) against K, with Monte Carlo error bars; AIS as a
    horizontal line with its band.

    Parameters
    ----------
    rows : list of LogLikelihood
        Estimates at growing K (``sample_counts``), an AIS one last where there is one.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = new_figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    bits = all(r.bits_per_dim is not None for r in rows)

    def scale(r):
        return r.bits_per_dim if bits else r.mean

    def error(r):
        return r.mc_stderr / (r.dims * math.log(2)) if bits else r.mc_stderr

    sampled = [r for r in rows if r.method == "importance"]
    if sampled:
        ax.errorbar(
            [r.num_samples for r in sampled],
            [scale(r) for r in sampled],
            yerr=[0 if math.isnan(error(r)) else error(r) for r in sampled],
            marker="o",
            capsize=3,
            label="importance sampling (± Monte Carlo error)",
        )
        ax.set_xscale("log")
    for r in rows:
        if r.method == "ais":
            y, e = scale(r), error(r)
            ax.axhline(y, color="C1", label=label(r))
            ax.axhspan(y - e, y + e, color="C1", alpha=0.2)
    ax.set_xlabel("importance samples K")
    ax.set_ylabel("bits/dim (lower is better)" if bits else "log p(x), nats")
    ax.legend(frameon=False)
    return fig
