#!/usr/bin/env python3
"""An independent oracle for keylink's derived datasets (SPEC section 3).

Reads the job and contract files keylink ran, the original CSV input, the keys export and one
derived output, and checks the derived output row for row against what the spec says it must be:

- consent levels of a record: the mapping of its consent field when the mapping has it; without a
  mapping the field parsed as an int ("2") or int array ("[1,2]"); else the default levels;
- GRANULAR: included iff every requested level is among the record's levels; PII whose purpose is
  requested is decrypted. CUMULATIVE: included iff max(requested) <= max(record levels); PII with
  purpose <= max(requested) is decrypted;
- other PII stays ciphertext (checked by decrypting it with stock Tink under the row's keyLink);
- masked fields are lowercase hex HMAC-SHA256(seed, plaintext): PII only where decrypted, non-PII
  always; empty values stay empty.

Written separately from keylink's Rust code on purpose: only Python's stdlib and Google's tink.
Prints counts and row numbers, never values. Exit 0 when everything matches.

usage: derived_oracle.py --job J --contract C --input IN.csv --keys KEYS.csv --derived OUT.csv --index I
"""

import argparse
import base64
import csv
import fnmatch
import hashlib
import hmac
import json
import sys

import tink
from tink import daead, secret_key_access


def record_levels(consent, row):
    default = sorted(set(consent.get("default_consent_levels", [])))
    ext = consent.get("consent_level_extractor")
    if not ext:
        return default
    value = row.get(ext["field"])
    patterns = ext.get("field_patterns")
    if value is None:
        return default
    if patterns:
        if value in patterns:
            return sorted(set(patterns[value]["consent_levels"]))
        return default
    text = value.strip()
    try:
        if text.startswith("[") and text.endswith("]"):
            inner = text[1:-1].strip()
            parts = [p.strip() for p in inner.split(",")] if inner else []
        else:
            parts = [text]
        levels = []
        for p in parts:
            if not p.isdigit():
                return default
            levels.append(int(p))
        return sorted(set(levels))
    except ValueError:
        return default


def pii_levels(contract):
    pii = dict(contract.get("piiFields", contract.get("pii_fields", {})))
    for fm in contract.get("fieldMetadata", contract.get("field_metadata", [])):
        pdc = fm.get("personalDataConfig", fm.get("personal_data_config"))
        if pdc is None:
            continue
        name = fm.get("fieldName", fm.get("field_name"))
        if pdc.get("isPii", pdc.get("is_pii")):
            pii[name] = pdc.get("purposeLevel", pdc.get("purpose_level"))
        else:
            pii.pop(name, None)
    return pii


def main():
    ap = argparse.ArgumentParser()
    for a in ["--job", "--contract", "--input", "--keys", "--derived"]:
        ap.add_argument(a, required=True)
    ap.add_argument("--index", type=int, required=True)
    args = ap.parse_args()

    job = json.load(open(args.job))
    contract = json.load(open(args.contract))
    d = job["derived_data"][args.index]
    requested = sorted(set(d.get("consent_levels", [])))
    kind = d.get("consent_level_type", "GRANULAR")
    cumulative = kind in ("CUMULATIVE", 1)
    pii = pii_levels(contract)
    ref = contract["ref"]
    ref_text = f'{ref["handle"]}/{ref["name"]}/{ref["version"]}'

    masked_patterns, seed = [], None
    if d.get("masked_fields"):
        seed = d["masked_fields"]["seed"].encode()
        masked_patterns = d["masked_fields"]["field_patterns"][ref_text]["field_patterns"]

    def included(levels):
        if cumulative:
            return not requested or (levels and max(levels) >= max(requested))
        return all(l in levels for l in requested)

    def decrypts(purpose):
        if cumulative:
            return bool(requested) and purpose <= max(requested)
        return purpose in requested

    daead.register()
    primitives = {}
    with open(args.keys, newline="") as f:
        for row in csv.DictReader(f):
            ks = tink.json_proto_keyset_format.parse(row["encryptionKey"], secret_key_access.TOKEN)
            primitives[row["keyLink"]] = ks.primitive(daead.DeterministicAead)

    with open(args.input, newline="") as f:
        inputs = list(csv.DictReader(f))
    with open(args.derived, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames
        outputs = list(reader)

    header = list(inputs[0].keys()) if inputs else []
    masked = {c for c in header for p in masked_patterns if fnmatch.fnmatchcase(c, p)}
    expected_meta = ["strmMeta.eventContractRef", "strmMeta.timestamp", "strmMeta.keyLink",
                     "strmMeta.consentLevels"]
    problems = []
    if columns != header + expected_meta:
        problems.append("header differs from input columns + strmMeta columns")

    expected_rows = [(i, r) for i, r in enumerate(inputs) if included(record_levels(job.get("consent", {}), r))]
    if len(expected_rows) != len(outputs):
        problems.append(f"expected {len(expected_rows)} rows, found {len(outputs)}")

    cells = 0
    for (i, src), out in zip(expected_rows, outputs):
        levels = record_levels(job.get("consent", {}), src)
        if out["strmMeta.consentLevels"] != "[" + ",".join(map(str, levels)) + "]":
            problems.append(f"input row {i + 2}: consentLevels")
        if out["strmMeta.eventContractRef"] != ref_text:
            problems.append(f"input row {i + 2}: eventContractRef")
        for col in header:
            value, got = src[col], out[col]
            cells += 1
            mask = hmac.new(seed, value.encode(), hashlib.sha256).hexdigest() if seed else None
            if value == "":
                ok = got == ""
            elif col in pii:
                if decrypts(pii[col]):
                    ok = got == (mask if col in masked else value)
                else:
                    aead = primitives.get(out["strmMeta.keyLink"])
                    try:
                        ok = aead is not None and aead.decrypt_deterministically(
                            base64.b64decode(got, validate=True), b"") == value.encode()
                    except Exception:
                        ok = False
            elif col in masked:
                ok = got == mask
            else:
                ok = got == value
            if not ok:
                problems.append(f"input row {i + 2}: column {col}")

    if problems:
        print(f"derived_oracle: {len(problems)} mismatches; first: " + "; ".join(problems[:10]))
        sys.exit(1)
    print(f"derived_oracle: {len(outputs)} rows, {cells} cells, 0 mismatches")


if __name__ == "__main__":
    main()
