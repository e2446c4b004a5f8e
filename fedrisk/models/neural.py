"""Torch risk models for horizontal federations, as flat parameter vectors.

FedAvg moves a model as one float vector (what gets CKKS-encrypted), so the
models here expose ``get_flat()`` / ``set_flat()`` over a fixed parameter
order.  Both a logistic regression and a small MLP are offered; the MLP is
what the encrypted-FedAvg benchmark uses (>= 100,000 parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """What network to build: ``logistic`` or ``mlp`` with ``hidden_units`` per layer."""

    kind: str
    n_features: int
    hidden_units: int = 64
    hidden_layers: int = 2

    def build(self, seed: int) -> "RiskNet":
        return RiskNet(self, seed)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "n_features": self.n_features,
            "hidden_units": self.hidden_units,
            "hidden_layers": self.hidden_layers,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(
            kind=str(data["kind"]),
            n_features=int(data["n_features"]),
            hidden_units=int(data.get("hidden_units", 64)),
            hidden_layers=int(data.get("hidden_layers", 2)),
        )


class RiskNet(nn.Module):
    """A binary classifier emitting a logit of default."""

    def __init__(self, spec: ModelSpec, seed: int) -> None:
        super().__init__()
        if spec.kind not in ("logistic", "mlp"):
            raise ValueError(f"unknown model kind {spec.kind!r} (expected 'logistic' or 'mlp')")
        self.spec = spec
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # every party starts from the same weights
        self.body: nn.Module
        if spec.kind == "logistic":
            self.body = nn.Linear(spec.n_features, 1)
        else:
            layers: list[nn.Module] = []
            width = spec.n_features
            for _ in range(spec.hidden_layers):
                layers += [nn.Linear(width, spec.hidden_units), nn.ReLU()]
                width = spec.hidden_units
            layers.append(nn.Linear(width, 1))
            self.body = nn.Sequential(*layers)
        torch.random.set_rng_state(generator_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).squeeze(-1)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_flat(self) -> np.ndarray:
        return torch.cat([p.detach().reshape(-1) for p in self.parameters()]).double().numpy()

    def set_flat(self, flat: np.ndarray) -> None:
        if flat.shape != (self.n_params,):
            raise ValueError(f"expected {self.n_params} parameters, got shape {flat.shape}")
        offset = 0
        with torch.no_grad():
            for p in self.parameters():
                n = p.numel()
                p.copy_(torch.from_numpy(flat[offset : offset + n].astype(np.float32)).reshape(p.shape))
                offset += n

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Named float32 arrays, for a safetensors model bundle."""
        return {name: t.detach().numpy().copy() for name, t in self.state_dict().items()}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()})

    def fit_local(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int,
        learning_rate: float,
        batch_size: int,
        seed: int,
        proximal_to: np.ndarray | None = None,
    ) -> float:
        """A few epochs of Adam on this party's rows; returns the last epoch's mean loss."""
        del proximal_to  # reserved for FedProx
        generator = torch.Generator().manual_seed(seed)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        optimizer = torch.optim.Adam(self.parameters(), lr=learning_rate)
        loss_fn = nn.BCEWithLogitsLoss()
        self.train()
        last = 0.0
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=generator)
            total, count = 0.0, 0
            for start in range(0, len(xt), batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(self(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            last = total / max(count, 1)
        return last

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Probability of default per row."""
        self.eval()
        with torch.no_grad():
            logits = self(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return torch.sigmoid(logits).double().numpy()
