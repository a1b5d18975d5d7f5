import math

import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import lvmkit
from lvmkit.diagnostics import (
    active_units,
    amortization_gap,
    khat_bands,
    kl_per_dimension,
    mutual_information,
    posterior,
    psis_khat,
)

matplotlib.use("Agg")


class PPCA(nn.Module):
    """x = W z + mu + s * noise with orthogonal columns of W, so p(z | x) is exactly a diagonal
    Gaussian; ``narrow`` shrinks the guide's scale to make it a bad proposal."""

    def __init__(self, narrow: float = 1.0, d: int = 5, s: float = 0.5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=torch.float64))
        self.register_buffer("w", q * torch.tensor([2.0, 1.0], dtype=torch.float64))
        self.register_buffer("mu", torch.randn(d, generator=g, dtype=torch.float64))
        self.s, self.narrow = s, narrow
        self.dummy = nn.Parameter(torch.zeros(()))  # amortization_gap optimises its own q

    def encode(self, x):
        m = self.w.T @ self.w + self.s**2 * torch.eye(2, dtype=x.dtype)  # diagonal here
        loc = ((x - self.mu) @ self.w) / m.diagonal()
        scale = (self.s**2 / m.diagonal()).sqrt() / self.narrow
        return dist.Normal(loc, scale.expand_as(loc)).to_event(1)

    def model(self, x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.mu, self.s).to_event(1), obs=x)

    def guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", self.encode(x))

    def sample(self, n):
        g = torch.Generator().manual_seed(1)
        z = torch.randn(n, 2, generator=g, dtype=torch.float64)
        noise = torch.randn(n, len(self.mu), generator=g, dtype=torch.float64)
        return z @ self.w.T + self.mu + self.s * noise


def test_exact_posterior_is_trusted_and_has_no_amortization_gap():
    ppca = PPCA()
    x = ppca.sample(30)
    khat = psis_khat(posterior(ppca.model, ppca.guide, x, num_samples=200))
    assert (khat < 0.5).all() and khat_bands(khat)["good (<0.5)"] == 1.0
    gap = amortization_gap(ppca, x, steps=30)
    assert abs(gap.amortization_gap) < 1e-6 and abs(gap.approximation_gap) < 1e-6


def test_a_guide_ten_times_too_narrow_is_flagged():
    ppca = PPCA(narrow=10.0)
    x = ppca.sample(30)
    khat = psis_khat(posterior(ppca.model, ppca.guide, x, num_samples=1000))
    assert khat.median() > 0.7 and khat_bands(khat)["unreliable (>0.7)"] >= 0.9


def test_refinement_and_importance_sampling_order_the_bounds():
    ppca = PPCA(narrow=3.0)  # a poor amortized guide: refinement has something to fix
    x = ppca.sample(20)
    gap = amortization_gap(ppca, x, steps=300, lr=0.05, num_ll_samples=2000)
    assert gap.refined_elbo >= gap.amortized_elbo
    assert gap.log_likelihood >= gap.refined_elbo - 0.01  # within Monte-Carlo error
    assert gap.amortization_gap > 0.5 and abs(gap.approximation_gap) < 0.05


def test_active_units_count_known_dead_dimensions():
    class HalfDead(nn.Module):
        def encode(self, x):  # dims 0, 1 follow x; dims 2, 3 are constant: dead
            loc = torch.cat([x[:, :2], torch.zeros(len(x), 2)], dim=1)
            return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    model = HalfDead()
    x = torch.randn(200, 4)
    count, variances = active_units(model, x)
    assert count == 2 and variances[2:].abs().max() == 0
    kl = kl_per_dimension(model, x)
    assert kl[2:].abs().max() == 0 and (kl[:2] > 0.1).all()
    assert 0 < mutual_information(model, x) <= torch.log(torch.tensor(200.0))


@pytest.mark.parametrize("kind", ["built-in", "user"])
def test_posterior_is_inference_data_arviz_accepts(kind, tmp_path):
    import arviz as az

    if kind == "built-in":
        torch.manual_seed(0)
        lvm = lvmkit.models.GaussianLVM(lvmkit.models.GaussianLVMConfig(z_dim=3))
        model, guide, x = lvm.model, lvm.guide, torch.rand(6, 1, 8, 8)
    else:
        ppca = PPCA()
        model, guide, x = ppca.model, ppca.guide, ppca.sample(6)
    idata = posterior(model, guide, x, num_samples=20)
    assert set(idata.groups()) == {
        "posterior",
        "posterior_predictive",
        "log_likelihood",
        "sample_stats",
        "observed_data",
    }
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "datapoint", "z_dim_0") and z.shape[:3] == (1, 20, 6)
    assert idata.posterior_predictive["x"].shape[:3] == (1, 20, 6)
    assert len(az.summary(idata, var_names=["z"])) == 6 * z.shape[-1]
    az.plot_posterior(idata, var_names=["z"], coords={"datapoint": [0]})
    idata.to_netcdf(tmp_path / "posterior.nc")
    back = az.from_netcdf(tmp_path / "posterior.nc")
    assert back.posterior["z"].shape == z.shape


def test_diagnose_builds_a_report_that_reads_well(tmp_path):
    """diagnose() of a fitted LVM: sections in order, traversals of the dims with the most KL,
    the MI estimate flagged at its ceiling, advice when k-hat is high, files written by save."""
    digits = lvmkit.data.load("digits")
    train, test = digits[:1500], digits[1500:1540]
    torch.manual_seed(0)
    lvm = lvmkit.models.GaussianLVM(lvmkit.models.GaussianLVMConfig(z_dim=6, hidden=(64,)))
    untrained = lvmkit.diagnostics.diagnose(lvm, test, num_samples=20)
    lvmkit.fit(lvm.model, lvm.guide, lvm.prepare(train), epochs=60, lr=3e-3, progress=False)
    lvm.eval()
    report = lvmkit.diagnostics.diagnose(lvm, test, summary={"epochs": 60}, num_samples=20)
    headings = [s.heading.split(" (")[0].split("?")[0] for s in report.sections]
    assert headings == [
        "Training",
        "Can the guide be trusted",
        "Has log p(x) settled",
        "Did the code collapse",
        "What does amortization cost",
        "Posterior predictive check",
        "How good are the samples",
    ]
    kl = report.results["kl_per_dim"]
    labels = [t.get_text() for t in report.figures["traversals.png"].axes[0].texts]
    dims = [int(label.split()[0][1:]) for label in labels]
    assert dims == sorted(range(6), key=lambda j: -kl[j])  # busiest first, every dim here
    assert all(f"KL {kl[j]:.2f}" in label for j, label in zip(dims, labels, strict=True))

    def reading(r, name):
        rows = [row for s in r.sections for row in s.rows if row[0] == name]
        return rows[0][2] if rows else None

    rows = report.results["convergence"]  # IS at K = 1, 10, 20, then AIS from the guide
    assert [(r["method"], r["num_samples"]) for r in rows][:3] == [
        ("importance", 1),
        ("importance", 10),
        ("importance", 20),
    ]
    assert rows[3]["method"] == "ais" and rows[3]["steps"] == 50
    assert rows[0]["mean"] < rows[2]["mean"] < rows[3]["mean"]  # IS rises with K; AIS tighter
    assert all(r["bits_per_dim"] > 0 for r in rows)  # bounds on a 17-level likelihood
    assert reading(report, "reading") is not None

    ceiling = math.log(40)
    assert report.results["mutual_information_ceiling"] == pytest.approx(ceiling)
    assert report.results["mutual_information"] > 0.9 * ceiling
    assert "at its ceiling" in reading(report, "I_q(x; z)")
    assert untrained.results["mutual_information"] < 0.9 * ceiling
    assert "at its ceiling" not in reading(untrained, "I_q(x; z)")
    unreliable = report.results["khat_bands"]["unreliable (>0.7)"]
    assert (reading(report, "what next") is not None) == (unreliable > 0.3)

    path = report.save(tmp_path)
    assert path == tmp_path / "report.html"
    for name in ("diagnostics.json", "posterior.nc", "traversals.png", "khat.png"):
        assert (tmp_path / name).is_file(), name


def test_figures_show_as_pictures_in_jupyter():
    """Figures made without pyplot still display in a notebook: IPython asks for _repr_png_."""
    from lvmkit.diagnostics import image_grid, latent_space

    for fig in (image_grid(torch.rand(4, 1, 8, 8)), latent_space(torch.randn(20, 3), None)):
        png = fig._repr_png_()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_row_labels_of_an_image_grid_fit_in_the_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lvmkit.diagnostics import image_grid

    labels = ["short", "a label of forty characters, or near it"]
    fig = image_grid(torch.rand(10, 1, 8, 8), nrow=2, row_labels=labels)
    renderer = FigureCanvasAgg(fig).get_renderer()
    texts = fig.axes[0].texts
    assert [t.get_text() for t in texts] == labels
    assert all(t.get_window_extent(renderer).x0 >= 0 for t in texts)
