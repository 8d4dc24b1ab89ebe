"""Answering input files (and texts) that are not store items with the cascade, shared by both predict engines.

Why here and not in the CLI: ``flywheel predict FILES`` (local) and the Ray Data workers of ``--engine ray`` must
read a file the same way -- the same content hash means the same cached teacher answer, so a file answered by one
engine is never paid for again by the other.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llm_flywheel.data.base import sha256


def read_input(path: Path, modality: str) -> tuple[Any, str]:
    """(content the student reads, content hash) of one input file; raises on a file the modality cannot read."""
    data = path.read_bytes()
    if modality == "image":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return data, sha256(data)
    if modality == "text":
        text = data.decode("utf-8")
        return text, sha256(text.encode("utf-8"))
    feats = json.loads(data)
    if not isinstance(feats, list) or not all(isinstance(x, (int, float)) for x in feats):
        raise ValueError("a tabular input file must hold a JSON list of numbers")
    return [float(x) for x in feats], sha256(json.dumps(feats).encode())


def expand_inputs(paths: Iterable[Path]) -> list[Path]:
    """Files as given; a folder stands for the files under it (sorted, hidden ones skipped)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file()
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


async def answer_inputs(casc: Any, inputs: Sequence[Path | str], *, log: bool, concurrency: int = 16,
                        origin: str = "predict") -> list[Any]:
    """The cascade's answer (or the read error, as a ValueError) for each file (Path) or text (str), in order.

    Teacher answers go through the content-hash cache (stored before use); the teacher session is closed at the
    end because it belongs to this event loop.
    """
    sem = asyncio.Semaphore(max(1, concurrency))
    modality = casc.task.modality

    async def one(f: Path | str) -> Any:
        try:
            content, h = (f, sha256(f.encode("utf-8"))) if isinstance(f, str) else read_input(f, modality)
        except Exception as e:  # unreadable input: report it, keep going
            return ValueError(f"cannot read {modality} input ({type(e).__name__}: {e})")
        async with sem:
            return await casc.apredict_raw(content, origin=origin, log=log, content_hash=h)

    try:
        return list(await asyncio.gather(*(one(f) for f in inputs)))
    finally:
        await casc.aclose()
