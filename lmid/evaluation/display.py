"""What the results tables show around our numbers: column names and order, rows, the paper's numbers.

Shared by ``lmid aggregate`` (lmid/evaluation/tables.py) and the HTML report, so both name and
order the methods alike. The method facts are views of lmid/registry.py.
"""

from __future__ import annotations

from lmid.registry import METHOD_NAMES, METHODS

#: The paper's Table (PD → T1 on IXI; docs/method.md §2): (mean, std) over its 75 test slices.
PAPER = {
    "cyclegan": {"dice": (0.85, 0.07), "psnr": (18.88, 1.26), "ssim": (0.27, 0.04)},
    "stylegan2": {"dice": (0.66, 0.10), "psnr": (10.15, 1.49), "ssim": (0.06, 0.03)},
    "sdedit": {"dice": (0.82, 0.06), "psnr": (15.96, 1.54), "ssim": (0.50, 0.06)},
    "lmidiffusion": {"dice": (0.88, 0.05), "psnr": (20.22, 1.43), "ssim": (0.69, 0.06)},
}
PAPER_LABEL = "paper (IXI, not our data)"
PAPER_SLICES = 75  # the paper's test slices: the n of its rows
#: Views of lmid/registry.py: column names, column order (the paper's four, then the upper bound
#: and the references), and the methods that compete with LMIDiffusion (best of them bold).
DISPLAY = {name: spec.display for name, spec in METHODS.items()}
ORDER = METHOD_NAMES
COMPETITORS = tuple(name for name, spec in METHODS.items() if spec.competitor)
#: Table rows: (key in the summary, label, decimals).
ROWS = (("dice", "Dice", 2), ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 2))


def role(method: str, params=None) -> str:
    """What a column is, in a few words (shown under the method's name)."""
    if method not in METHODS:
        return ""
    text = METHODS[method].role
    if "{source_fraction}" in text:  # CycleGAN: how much of the source it may see
        frac = params.cyclegan.source_fraction if params is not None else 0.11
        text = text.replace("{source_fraction}", f"{100 * frac:g} %")
    return text


def column_title(method: str, params=None) -> str:
    r = role(method, params)
    name = DISPLAY.get(method, method)
    return f"{name} ({r})" if r else name


def method_order(methods, params=None) -> list[str]:
    preferred = list(ORDER)
    if params is not None:
        preferred += [m for m in params.methods if m not in preferred]
    known = [m for m in preferred if m in methods]
    return known + sorted(m for m in methods if m not in known)
