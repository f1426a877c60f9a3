"""Published trained models: a folder that lets anyone re-translate, re-score and re-report a run
without training it again.

``lmid publish`` gathers a run's inference weights into one folder::

    models/study/
      README.md            what trained them: params, commit, steps, images, CPU-hours, sha256
      SHA256SUMS           one line per file (``sha256sum -c SHA256SUMS`` checks them)
      manifest.json        per method: training fingerprint, the params it read, the files
      params.yaml          the run's resolved parameters
      curves.json          the training-time evidence that needs the snapshots (convergence curve,
                           snapshot curves of the baselines, SDEdit's DDPM samples per snapshot),
                           which are not published
      <method>/model.pt    inference weights only (EMA where there is one; no optimiser state)
      <method>/train_info.json, <method>/train_log.csv
      sampler/<setting>.csv  the run's per-slice scores of each LMIDiffusion sampler setting

``model.pt`` already holds only what translation needs (``lmid train`` writes the resumable state
to ``checkpoint.pt``), so publishing copies it; the size limit keeps the folder committable.

``lmid use-published`` is the train step of a run that uses them (the workflow's
``paths.published``): it checks the files' sha256, and that the method's training fingerprint
(its training parameters and the bytes of the training split, :func:`lmid.methods.runner.training_fingerprint`)
equals the one the weights were trained under, then copies them where ``lmid train`` would have
written them. A run with other data or other training parameters is refused with the keys that
differ, never silently scored with weights trained for something else.

The sampler sweep is the one step after training that costs as much as the rest together (two
1000-step settings), so a run from published models reuses its published scores, but only after
re-sampling the first ``evaluate.published_sweep_check`` slices of each setting from the published
weights and finding the same scores (:func:`published_sweep`, :func:`lmid.methods.runner.sweep_sampler`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from lmid.config import Params
from lmid.errors import InputFileError, LmidError
from lmid.io import file_sha256, read_json, write_json, write_text

log = logging.getLogger(__name__)

#: Files of a trained method folder that are published (model.pt is required).
METHOD_FILES = ("model.pt", "train_info.json", "train_log.csv")
SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
#: A committed folder stays small; the study's weights are a few MB.
DEFAULT_LIMIT_MB = 60.0


def _train_values(params: Params, method: str) -> dict:
    from lmid.registry import key_values, spec

    s = spec(method)
    return key_values(params.model_dump(mode="json"), s.rerun_train_keys, exclude=s.bookkeeping_keys)


def read_sums(folder: Path) -> dict[str, str]:
    path = Path(folder) / SUMS
    if not path.is_file():
        raise InputFileError(path, "not found (not a folder written by 'lmid publish')")
    sums = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise InputFileError(path, f"line {n} is not '<sha256>  <file>'")
        sums[name] = digest
    return sums


def verify(folder: Path, names=None) -> None:
    """Check the sha256 of ``names`` (default: every listed file) against SHA256SUMS."""
    folder = Path(folder)
    sums = read_sums(folder)
    for name in names if names is not None else sums:
        if name not in sums:
            raise InputFileError(folder / name, f"not listed in {folder / SUMS}")
        path = folder / name
        if not path.is_file():
            raise InputFileError(path, "listed in SHA256SUMS but missing (a Git LFS pointer or an incomplete copy?)")
        got = file_sha256(path)
        if got != sums[name]:
            raise InputFileError(
                path,
                f"sha256 {got[:12]}… differs from SHA256SUMS ({sums[name][:12]}…): "
                "the file changed since it was published",
            )


#: The published check: the first slices of the test split and the run's own per-slice scores of them.
CHECK_SLICES, CHECK_SCORES, CHECK_N = "check/slices.npz", "check/scores.csv", 3


def publish(
    params: Params,
    models_dir: Path,
    train_path: Path,
    out_dir: Path,
    *,
    curves: dict | None = None,
    commit: str = "unknown",
    limit_mb: float = DEFAULT_LIMIT_MB,
    test_path: Path | None = None,
    scores_path: Path | None = None,
    sampler_scores: list[Path] = (),
    val_path: Path | None = None,
) -> dict:
    """Write the published folder ``out_dir`` from a run's ``models_dir`` (see the module docstring).

    With ``test_path`` and ``scores_path`` (the run's per-slice scores of one method on that split,
    ``metrics/<experiment>/<method>.csv``) it also keeps ``check/``: the first 3 test slices and
    their scores. Translation seeds each slice by its index, and the first indices of a split
    draw the same seeds however long the split is, so translating ``check/slices.npz`` with the
    published weights must give these scores again (tests/test_published.py).

    ``sampler_scores`` (the run's ``metrics/sampler/<setting>.csv``, with ``val_path``, the
    validation split they score) are kept as ``sampler/<setting>.csv``."""
    from lmid.config import write_params
    from lmid.methods.runner import training_fingerprint

    models_dir, out_dir = Path(models_dir), Path(out_dir)
    files: list[tuple[Path, str]] = []
    methods = {}
    for method in params.methods:
        folder = models_dir / method
        if not (folder / "model.pt").is_file():
            raise InputFileError(folder / "model.pt", f"not found: {method} is in params.methods but was not trained")
        info = read_json(folder / "train_info.json") if (folder / "train_info.json").is_file() else {}
        names = [f"{method}/{n}" for n in METHOD_FILES if (folder / n).is_file()]
        files += [(models_dir / n, n) for n in names]
        methods[method] = {
            "files": names,
            "fingerprint": training_fingerprint(params, method, train_path),
            "train_params": _train_values(params, method),
            "train_info": _info_facts(info),
        }
    if (models_dir / "kmeans.json").is_file():
        files.append((models_dir / "kmeans.json", "kmeans.json"))
    sampler = _sampler_files(sampler_scores, val_path)
    files += [(src, f"{SAMPLER_DIR}/{setting}.csv") for setting, src in sampler.items()]
    size_mb = sum(src.stat().st_size for src, _ in files) / 2**20
    if size_mb > limit_mb:
        raise LmidError(f"the published weights would be {size_mb:.1f} MB, over the {limit_mb:g} MB limit (--limit-mb)")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    for src, name in files:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp / name)
    write_params(params, tmp / "params.yaml")
    if test_path is not None and scores_path is not None:
        _write_check(Path(test_path), Path(scores_path), tmp)
    write_json(tmp / "curves.json", curves or {})
    manifest = {"commit": commit, "split_sha256": file_sha256(train_path), "methods": methods}
    if sampler:
        manifest["sampler"] = {"settings": sorted(sampler), "val_sha256": file_sha256(val_path)}
    write_json(tmp / MANIFEST, manifest)
    listed = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    sums = {name: file_sha256(tmp / name) for name in listed}
    write_text(tmp / SUMS, "".join(f"{d}  {n}\n" for n, d in sums.items()))
    write_text(tmp / "README.md", readme(params, manifest, sums, tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log.info("published %d methods, %.1f MB, to %s", len(methods), size_mb, out_dir)
    return manifest


def _sampler_files(paths, val_path: Path | None) -> dict[str, Path]:
    """``{setting: csv}`` of the sweep scores to publish, named as the sampler rule names them."""
    from lmid.config import parse_sampler_setting

    paths = [Path(p) for p in paths]
    if paths and val_path is None:
        raise LmidError("--sampler-scores needs --val (the validation split they score)")
    out = {}
    for path in paths:
        try:
            parse_sampler_setting(path.stem)
        except ValueError as err:
            raise InputFileError(path, f"is not named for a sampler setting ({err})") from None
        if not path.is_file():
            raise InputFileError(path, "not found")
        out[path.stem] = path
    return out


def _write_check(test_path: Path, scores_path: Path, folder: Path) -> None:
    import numpy as np

    from lmid.data.slices import load_slices
    from lmid.evaluation.metrics import read_metrics_csv

    split = load_slices(test_path)
    scores = read_metrics_csv(scores_path)
    rows = scores[scores["index"] < CHECK_N].sort_values("index")
    if len(rows) != CHECK_N or len(split) < CHECK_N:
        raise InputFileError(scores_path, f"does not score the first {CHECK_N} slices of {test_path}")
    (folder / "check").mkdir(parents=True, exist_ok=True)
    split.subset(np.arange(CHECK_N)).save(folder / CHECK_SLICES)
    rows.to_csv(folder / CHECK_SCORES, index=False)


def _info_facts(info: dict) -> dict:
    """Steps, images and time of a train_info.json, under one set of names for every method."""
    steps = info.get("steps")
    if isinstance(steps, dict):  # CDM: one count per stage
        steps = sum(int(v) for v in steps.values())
    images = info.get("images_seen")
    if images is None and isinstance(steps, int) and isinstance(info.get("batch_size"), int):
        images = steps * info["batch_size"]
    cpu = next((info[k] for k in ("train_loop_cpu_s", "train_loop_cpu_s_total") if info.get(k) is not None), None)
    facts = {
        "steps": steps,
        "images_seen": images,
        "train_cpu_s": cpu,
        "train_wall_s": info.get("train_wall_s"),
        "device": info.get("device"),
    }
    return {k: v for k, v in facts.items() if v is not None}


def readme(params: Params, manifest: dict, sums: dict[str, str], folder: Path) -> str:
    from lmid.registry import METHODS

    lines = [
        f"# Published models: {params.preset} preset",
        "",
        f"The inference weights of every method of one `{params.preset}` run (commit `{manifest['commit']}`), "
        "written by `lmid publish`. They let the run's tables, figures and report be regenerated without "
        "training:",
        "",
        "    snakemake --cores all --configfile workflow/presets/study.yaml workflow/presets/from-published.yaml",
        "",
        "and `lmid translate --method <method> --model models/study/<method>/model.pt ...` use them directly. "
        "`use-published` refuses them for another training split or other training parameters "
        "(`manifest.json` holds each method's training fingerprint and parameters; `params.yaml` the whole run's).",
        "",
        "| Method | Steps | Images seen | Training CPU-h | Wall h | Device |",
        "|---|---|---|---|---|---|",
    ]
    for method, m in manifest["methods"].items():
        i = m["train_info"]
        cpu = f"{i['train_cpu_s'] / 3600:.2f}" if i.get("train_cpu_s") is not None else "—"
        wall = f"{i['train_wall_s'] / 3600:.2f}" if i.get("train_wall_s") is not None else "—"
        lines.append(
            f"| {METHODS[method].display} | {i.get('steps', '—')} | {i.get('images_seen', '—')} | {cpu} | "
            f"{wall} | {i.get('device', '—')} |"
        )
    lines += [
        "",
        "`model.pt` holds the inference weights only (EMA where the method keeps one); no optimiser state, "
        "so these files cannot resume training.",
        "",
        "| File | Bytes | sha256 |",
        "|---|---|---|",
    ]
    for name, digest in sums.items():
        lines.append(f"| `{name}` | {(folder / name).stat().st_size} | `{digest}` |")
    lines += ["", "Check them with `sha256sum -c SHA256SUMS` in this folder.", ""]
    return "\n".join(lines)


def published_manifest(folder: Path) -> dict:
    """The manifest of a published folder (its ``methods``: method -> files, fingerprint, ...)."""
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        raise InputFileError(manifest_path, "not found (not a folder written by 'lmid publish')")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("methods"), dict):
        raise InputFileError(manifest_path, "has no 'methods' mapping (not a folder written by 'lmid publish')")
    return manifest


def published_entry(folder: Path, method: str) -> tuple[dict, dict]:
    """The manifest of a published folder and its entry for ``method``, after checking the sha256
    of the manifest and of that method's files."""
    folder = Path(folder)
    manifest = published_manifest(folder)
    entry = manifest["methods"].get(method)
    if entry is None:
        raise InputFileError(folder, f"publishes no {method!r} (it has: {', '.join(manifest['methods'])})")
    verify(folder, [MANIFEST, *entry["files"]])
    return manifest, entry


def use_published(params: Params, folder: Path, method: str, train_path: Path, out_dir: Path) -> None:
    """Copy ``method``'s published files into ``out_dir`` after checking sha256 and fingerprint."""
    from lmid.methods.runner import training_fingerprint

    folder, out_dir = Path(folder), Path(out_dir)
    manifest, entry = published_entry(folder, method)
    shown = _differences(_train_values(params, method), entry["train_params"])
    if shown:
        raise LmidError(
            f"{folder}/{method} was trained with other parameters ({shown}); use the params it was "
            f"published with ({folder / 'params.yaml'}) or train it"
        )
    got = training_fingerprint(params, method, train_path)
    if got != entry["fingerprint"]:
        raise InputFileError(
            train_path,
            f"is not the training split {folder}/{method} was trained on (its sha256 "
            f"{file_sha256(train_path)[:12]}…, published {manifest['split_sha256'][:12]}…)",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in entry["files"]:
        tmp = out_dir / (Path(name).name + ".partial")
        shutil.copyfile(folder / name, tmp)
        tmp.replace(out_dir / Path(name).name)
    log.info("%s: published weights from %s", method, folder)


#: Folder of the published sampler sweep's scores, one ``<setting>.csv`` per setting.
SAMPLER_DIR = "sampler"


def published_sweep(folder: Path, params: Params, val_path: Path):
    """The published per-slice scores of ``params``' sampler setting on ``val_path``, or ``None``
    where the folder has none for that setting.

    Refused (never silently reused) when the file's sha256 changed, when ``val_path`` is not the
    validation split they were scored on, or when any parameter the sweep reads (besides the
    setting itself, :data:`lmid.registry.SWEEP_KEYS`) differs from the published run's."""
    from lmid.config import load_params, parse_sampler_setting
    from lmid.evaluation.metrics import read_metrics_csv
    from lmid.registry import SWEEP_KEYS, key_values

    folder = Path(folder)
    manifest = published_manifest(folder)
    # Settings are matched by what they mean: "ancestral-1000" is "ancestral-1000-uniform".
    sampler = params.lmidiffusion.sampler.model_dump(mode="json")
    setting = next(
        (
            s
            for s in (manifest.get("sampler") or {}).get("settings", [])
            if all(sampler[k] == v for k, v in parse_sampler_setting(s).items())
        ),
        None,
    )
    if setting is None:
        return None
    name = f"{SAMPLER_DIR}/{setting}.csv"
    verify(folder, [MANIFEST, "params.yaml", name])
    if (got := file_sha256(val_path)) != manifest["sampler"]["val_sha256"]:
        raise InputFileError(
            val_path,
            f"is not the validation split {folder / name} scored (sha256 {got[:12]}…, "
            f"published {manifest['sampler']['val_sha256'][:12]}…)",
        )
    theirs = load_params(folder / "params.yaml", {"lmidiffusion": {"sampler": parse_sampler_setting(setting)}})
    mine, theirs = (_leaves(key_values(p.model_dump(mode="json"), SWEEP_KEYS)) for p in (params, theirs))
    if shown := _differences(mine, theirs):
        raise LmidError(f"{folder / name} was scored with other parameters ({shown}); sample it afresh")
    return read_metrics_csv(folder / name)


def _leaves(values: dict, prefix: str = "") -> dict:
    """``{"lmi": {"bins": 27}}`` → ``{"lmi.bins": 27}``, so a difference names the one key."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _differences(mine: dict, published: dict) -> str:
    """The first keys whose values differ, as "key: published X, params Y"; empty if none."""
    differ = sorted(k for k in set(mine) | set(published) if mine.get(k) != published.get(k))
    return "; ".join(f"{k}: published {published.get(k)!r}, params {mine.get(k)!r}" for k in differ[:4])


def published_curves(folder: Path) -> dict:
    verify(folder, ["curves.json"])
    return read_json(Path(folder) / "curves.json")
