"""A generated month of Binance spot trades, laid out as the archive ships it (benchmarks only).

    .venv/bin/python bench/monthgen.py [--dir DIR] [--days 30] [--trades-per-day 1100000]

Thirty daily `BTCUSDT-trades-2024-04-DD.zip` files (one CSV each, no header, the spot `trades`
columns, timestamps in ms as in 2024) with a `.CHECKSUM` beside each, under
`<dir>/data/spot/daily/trades/BTCUSDT/` — the archive's path, so the market comes from it.

Realistic 2024 rates: ~1.1M trades on an average day (weekends ~30% quieter, +-15% day to
day), an intraday profile that peaks in the US afternoon, bursts, a price near $69k on a cent
grid that walks ~$1,000 a day, quantities on the 0.00001 BTC lot grid. Trade ids run on
without gaps across the month. Deterministic: the same seed gives the same bytes; each day has
its own generator, so days are made in parallel and a day can be made again on its own.
The files are cached: a directory whose marker names the same parameters is reused.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

VERSION = 1  # bump when the generator's output changes
SYMBOL = "BTCUSDT"
ARCHIVE_DIR = Path("data/spot/daily/trades") / SYMBOL


@dataclass(frozen=True)
class Spec:
    first_day: str = "2024-04-01"
    days: int = 30
    trades_per_day: int = 1_100_000  # the month's mean
    seed: int = 19
    first_id: int = 3_500_000_000
    version: int = VERSION

    def day(self, i: int) -> date:
        return date.fromisoformat(self.first_day) + timedelta(days=i)

    def counts(self) -> list[int]:
        """Trades per day: weekends quieter, day-to-day noise, scaled to the mean."""
        rng = np.random.default_rng([self.seed, 0])
        w = np.array([0.7 if self.day(i).weekday() >= 5 else 1.0 for i in range(self.days)])
        w *= rng.uniform(0.85, 1.15, self.days)
        return [int(x) for x in np.round(w / w.mean() * self.trades_per_day)]

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def name_of(d: date) -> str:
    return f"{SYMBOL}-trades-{d:%Y-%m-%d}"


def _fmt_fixed(units: pa.Array, scale_digits: int, pad_to: int = 8) -> pa.Array:
    """Integers in units of 10^-scale_digits as `int.frac` text with `pad_to` decimals."""
    scale = 10 ** scale_digits
    whole = pc.cast(pc.divide(units, scale), pa.string())
    frac = pc.utf8_lpad(pc.cast(pc.subtract(units, pc.multiply(pc.divide(units, scale), scale)),
                                pa.string()), scale_digits, "0")
    frac = pc.binary_join_element_wise(frac, "0" * (pad_to - scale_digits), "")
    return pc.binary_join_element_wise(whole, frac, ".")


def day_table(spec: Spec, i: int, n: int, first_id: int) -> pa.Table:
    """Day i's n trades as the spot file's text columns."""
    rng = np.random.default_rng([spec.seed, 1, i])
    d = spec.day(i)
    t0_ms = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
    # Intraday rate per second: a US-afternoon peak, a quieter Asian night, and bursts.
    sec = np.arange(86_400)
    rate = 1.0 + 0.6 * np.cos((sec / 86_400 - 15 / 24) * 2 * np.pi)
    for centre in rng.uniform(0, 86_400, 12):
        rate += rng.uniform(2, 8) * np.exp(-0.5 * ((sec - centre) / rng.uniform(60, 600)) ** 2)
    per_sec = rng.multinomial(n, rate / rate.sum())
    t = np.repeat(t0_ms + sec * 1000, per_sec) + rng.integers(0, 1000, n)
    t.sort()
    # Price in cents: a random walk of ~$1,000 a day around a level that drifts across days.
    level = 6_900_000 + int(300_000 * np.sin(i / 4.0))
    cents = level + np.cumsum(np.rint(rng.normal(0, 95, n))).astype(np.int64)
    cents = np.maximum(cents, 100)
    # Quantities on the 0.00001 BTC grid, heavy-tailed (median ~0.001 BTC).
    units = np.clip(np.rint(rng.lognormal(np.log(100), 1.6, n)), 1, 500_000_000).astype(np.int64)
    buyer_maker = rng.random(n) < 0.48
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    cents_a, units_a = pa.array(cents), pa.array(units)
    return pa.table({
        "id": pa.array(ids),
        "price": _fmt_fixed(cents_a, 2),
        "qty": _fmt_fixed(units_a, 5),
        "quote_qty": _fmt_fixed(pc.multiply(cents_a, units_a), 7),  # exact: 2 + 5 decimals
        "time": pa.array(t),
        "is_buyer_maker": pa.array(np.where(buyer_maker, "True", "False")),
        "is_best_match": pa.array(np.full(n, "True")),
    })


def _write_day(args: tuple[Spec, int, int, int, str]) -> str:
    spec, i, n, first_id, out = args
    table = day_table(spec, i, n, first_id)
    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    name = name_of(spec.day(i))
    zpath = Path(out) / f"{name}.zip"
    tmp = zpath.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        # A fixed timestamp: the same seed gives the same zip bytes (and the same CHECKSUM).
        info = zipfile.ZipInfo(f"{name}.csv", date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, buf.getvalue(), compresslevel=1)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.replace(zpath)
    Path(f"{zpath}.CHECKSUM").write_text(f"{digest}  {zpath.name}\n")
    return str(zpath)


def generate(root: Path, spec: Spec = Spec(), *, workers: int = 2) -> list[Path]:
    """The month's zips under root/<archive path> (made once; reused when the marker says
    they are this spec's)."""
    out = root / ARCHIVE_DIR
    marker = root / "month.json"
    want = {**asdict(spec), "key": spec.key(), "counts": spec.counts()}
    paths = [out / f"{name_of(spec.day(i))}.zip" for i in range(spec.days)]
    if marker.exists() and json.loads(marker.read_text()) == want and all(
            p.exists() for p in paths):
        return paths
    out.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    counts = spec.counts()
    starts = np.cumsum([spec.first_id] + counts[:-1]).tolist()
    jobs = [(spec, i, counts[i], int(starts[i]), str(out)) for i in range(spec.days)]
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_write_day, jobs))
    marker.write_text(json.dumps(want, indent=1))
    return paths


def copy_csv(path: Path, dst: Path, market: str = "spot") -> int:
    """The file's rows (a daily zip or its CSV) in btc_ticks' column order, for a `psql \\copy`
    baseline (untimed); returns the row count."""
    with contextlib.ExitStack() as stack:
        if Path(path).suffix == ".zip":
            z = stack.enter_context(zipfile.ZipFile(path))
            f = stack.enter_context(z.open(z.namelist()[0]))
        else:
            f = stack.enter_context(open(path, "rb"))
        t = pacsv.read_csv(f, read_options=pacsv.ReadOptions(
            column_names=["id", "price", "qty", "quote", "time", "bm", "best"]),
            convert_options=pacsv.ConvertOptions(column_types={
                "price": pa.string(), "qty": pa.string(), "quote": pa.string(),
                "bm": pa.string()}))
    ms = t.column("time").to_numpy()
    out = pa.table({
        "bucket_5m": pa.array((ms - ms % 300_000) * 1000).cast(pa.timestamp("us")),
        "market": pa.array([market] * t.num_rows),
        "symbol": pa.array([SYMBOL] * t.num_rows),
        "trade_id": t.column("id"),
        "event_time": pa.array(ms * 1000).cast(pa.timestamp("us")),
        "price": t.column("price"), "quantity": t.column("qty"),
        "quote_quantity": t.column("quote"),
        "is_buyer_maker": pc.equal(pc.utf8_lower(t.column("bm")), "true"),
    })
    pacsv.write_csv(out, dst, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    return t.num_rows


COPY_COLUMNS = ("bucket_5m, market, symbol, trade_id, event_time, price, quantity, "
                "quote_quantity, is_buyer_maker")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--days", type=int, default=Spec.days)
    ap.add_argument("--trades-per-day", type=int, default=Spec.trades_per_day)
    a = ap.parse_args()
    spec = Spec(days=a.days, trades_per_day=a.trades_per_day)
    t0 = datetime.now()
    paths = generate(a.dir, spec)
    size = sum(p.stat().st_size for p in paths)
    print(f"{len(paths)} files, {sum(spec.counts()):,} trades, {size / 1e6:.0f} MB zipped, "
          f"{(datetime.now() - t0).total_seconds():.1f} s: {paths[0].parent}")


if __name__ == "__main__":
    main()
