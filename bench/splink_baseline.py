"""Splink 5 (unsupervised, DuckDB) on the same FHIR Patients, configured the way Splink's own tutorials
configure person data: name comparisons with term-frequency adjustments, a date-of-birth comparison,
u from random sampling, m from EM sessions blocked on different fields, λ from deterministic rules."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from matching import normalise as nz

NID = "http://example.org/national-id"


def flatten(p: Mapping[str, Any], nid_system: str = NID) -> dict[str, Any]:
    given, family = nz.given(p), nz.family(p)
    bd = nz.birth_date(p)
    dob = None
    year = None
    if bd:
        year = bd[0][:4]
        if bd[0][5:7] != "00" and bd[0][8:10] != "00":
            dob = bd[0]
    ids = (nz.split_identifier(x) for x in nz.identifiers(p))
    nid = [nz.folded_identifier(v) for s, v in ids if s == nid_system]
    phones, emails = nz.phones(p), nz.emails(p)
    city, line = nz.EXTRACTORS["address.city"][0](p), nz.EXTRACTORS["address.line"][0](p)
    return {
        "unique_id": p["id"],
        "first_name": given[0] if given else None,
        "middle_name": " ".join(given[1:]) or None,
        "surname": family[0] if family else None,
        "dob": dob,
        "year": year,
        "gender": nz.gender(p)[0] if nz.gender(p) else None,
        "national_id": nid[0] if nid else None,
        "phone": phones[0] if phones else None,
        "email": emails[0] if emails else None,
        "city": city[0] if city else None,
        "address_line": line[0] if line else None,
    }


def splink_dedupe(
    patients: Sequence[Mapping[str, Any]], thresholds: Sequence[float], seed: int = 1, nid: str = NID
) -> tuple[dict[float, dict[str, str]], list[tuple[str, str, float]]]:
    """Clusters (record id -> cluster id) at each match-probability threshold, and the scored pairs."""
    import pandas as pd
    import splink.comparison_library as cl
    from splink import Linker, SettingsCreator, block_on
    from splink.backends.duckdb import DuckDBAPI

    for name in ("splink", "duckdb"):
        logging.getLogger(name).setLevel(logging.ERROR)
    df = pd.DataFrame([flatten(p, nid) for p in patients])
    db_api = DuckDBAPI()
    sdf = db_api.register(df)
    settings = SettingsCreator(
        link_type="dedupe_only",
        comparisons=[
            cl.NameComparison("first_name").configure(term_frequency_adjustments=True),
            cl.NameComparison("surname").configure(term_frequency_adjustments=True),
            cl.DateOfBirthComparison("dob", input_is_string=True),
            cl.ExactMatch("gender"),
            cl.ExactMatch("national_id"),
            cl.ExactMatch("phone"),
            cl.EmailComparison("email"),
            cl.ExactMatch("city").configure(term_frequency_adjustments=True),
            cl.JaroWinklerAtThresholds("address_line", [0.94, 0.85]),
        ],
        blocking_rules_to_generate_predictions=[
            block_on("national_id"),
            block_on("first_name", "year"),
            block_on("surname", "year"),
            block_on("first_name", "surname"),
            block_on("dob"),
            block_on("phone", "gender"),
        ],
        retain_intermediate_calculation_columns=False,
    )
    linker = Linker(sdf, settings, log_level=logging.ERROR)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("first_name", "surname", "dob"), block_on("national_id")], recall=0.7
    )
    linker.training.estimate_u_using_random_sampling(max_pairs=2e6, seed=seed)
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("dob"))
    linker.training.estimate_parameters_using_expectation_maximisation(block_on("first_name", "surname"))
    # linker.training.estimate_parameters_using_expectation_maximisation(block_on("phone"))
    predictions = linker.inference.predict(threshold_match_probability=min(thresholds))
    pairs_df = predictions.as_pandas_dataframe()
    pairs = [
        (str(a), str(b), float(p))
        for a, b, p in zip(
            pairs_df["unique_id_l"], pairs_df["unique_id_r"], pairs_df["match_probability"], strict=True
        )
    ]
    out: dict[float, dict[str, str]] = {}
    for t in thresholds:
        clusters = linker.clustering.cluster_pairwise_predictions_at_threshold(
            predictions, threshold_match_probability=t
        ).as_pandas_dataframe()
        out[t] = {str(u): str(c) for u, c in zip(clusters["unique_id"], clusters["cluster_id"], strict=True)}
    return out, pairs
