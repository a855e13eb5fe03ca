#!/usr/bin/env python3
"""Independently checks keylink's encrypted output with stock Google Tink.

Usage:
  tink_decrypt.py --keys KEYS.csv [--keys MORE_KEYS.csv ...] --encrypted ENC --original ORIG
                  --pii Email,UserName [--format csv|jsonl] [--key-field SessionId]
                  [--delimiter ,]

KEYS.csv   keylink's keys export: header ``keyLink,encryptionKey,policyId,expiresAt``, where
           ``encryptionKey`` is a Tink JSON keyset (one AES256_SIV key, output prefix TINK).
           Pass ``--keys`` several times when keys were exported by earlier runs.
ENC        the encrypted dataset. CSV: the original columns in order, then
           ``strmMeta.eventContractRef,strmMeta.timestamp,strmMeta.keyLink,strmMeta.consentLevels``.
           JSONL: each original object with its non-empty PII values replaced by ciphertexts and
           a ``"strmMeta": {"eventContractRef", "timestamp", "keyLink", "consentLevels"}`` object,
           plus ``"jsonFields"``: the PII fields whose original value is a number, boolean,
           object or array, when the row has any.
ORIG       the original input holding exactly the accepted rows, in the same order (leave out
           rows that keylink rejected).
--pii      the PII fields, comma-separated; JSON fields may be nested, as ``a/b``.
--format   ``csv`` or ``jsonl``; by default from ENC's extension (.jsonl/.ndjson/.json: jsonl).
--key-field  the contract's key field: also checks that no keyLink serves two of its values.

For every row, the keyset of the row's ``strmMeta.keyLink`` decrypts each non-empty PII value
(base64 Tink ciphertext, associated data ``b""``) with Tink's DeterministicAead, and the result
must equal the original value: a CSV cell or JSON string as UTF-8 text; a JSON number or boolean
as its JSON text exactly as the original wrote it; a JSON object or array as JSON equal to the
original. JSON ``null``, empty strings and absent fields must be left as they were. Every
non-PII cell must equal the original.

Exit 0 printing ``tink_decrypt: N rows, M cells decrypted, 0 mismatches``; exit 1 with counts on
any mismatch; exit 2 on usage or input errors. Messages name rows (1-based data rows, without
the CSV header) and fields, never values.

Requires Python 3.11 and the ``tink`` package only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import json
import os
import sys
from collections import defaultdict

import tink
from tink import daead
from tink import secret_key_access

META_FIELDS = ["eventContractRef", "timestamp", "keyLink", "consentLevels"]
META_COLUMNS = ["strmMeta." + f for f in META_FIELDS]
# JSONL only, when a row has any: the PII fields whose value was JSON other than a string
JSON_FIELDS = "jsonFields"
MAX_ROWS_LISTED = 10
_ABSENT = object()  # a JSON field that is not there


class UsageError(Exception):
    """Bad arguments or unreadable inputs (exit 2)."""


class RawNumber:
    """A JSON number kept as the text the file wrote (``4.20`` stays ``4.20``)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawNumber) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:  # never printed with data; for debugging the script itself
        return "RawNumber(...)"


def loads_exact(text: str):
    """json.loads keeping numbers (and NaN/Infinity) as their source text."""
    return json.loads(
        text, parse_int=RawNumber, parse_float=RawNumber, parse_constant=RawNumber
    )


def csv_field_limit() -> None:
    # Keysets and long values can exceed csv's default 128 KiB field limit.
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 10


def load_keys(paths: list[str]) -> dict[str, "daead.DeterministicAead"]:
    daead.register()
    primitives: dict[str, daead.DeterministicAead] = {}
    keysets: dict[str, str] = {}
    for path in paths:
        try:
            f = open(path, newline="", encoding="utf-8-sig")
        except OSError as e:
            raise UsageError(f"cannot read keys file {path}: {e.strerror}") from None
        with f:
            reader = csv.reader(f)
            header = next(reader, None)
            expected = ["keyLink", "encryptionKey", "policyId", "expiresAt"]
            if header != expected:
                raise UsageError(
                    f"{path}: header must be {','.join(expected)}"
                )
            for n, row in enumerate(reader, start=1):
                if not row:
                    continue
                if len(row) != len(expected):
                    raise UsageError(f"{path}: row {n} has {len(row)} fields, not 4")
                key_link, keyset_json = row[0], row[1]
                if not key_link:
                    raise UsageError(f"{path}: row {n} has an empty keyLink")
                if key_link in keysets:
                    if keysets[key_link] != keyset_json:
                        raise UsageError(
                            f"{path}: row {n}: keyLink seen before with another keyset"
                        )
                    continue
                try:
                    handle = tink.json_proto_keyset_format.parse(
                        keyset_json, secret_key_access.TOKEN
                    )
                    primitive = handle.primitive(daead.DeterministicAead)
                except (tink.TinkError, ValueError, TypeError):
                    # The parser's message may quote the keyset (key bytes): not shown.
                    raise UsageError(
                        f"{path}: row {n}: stock Tink cannot load the encryptionKey keyset"
                    ) from None
                keysets[key_link] = keyset_json
                primitives[key_link] = primitive
    return primitives


def hashable(value):
    """A hashable, type-tagged stand-in for a parsed JSON or CSV value."""
    if isinstance(value, RawNumber):
        return ("number", value.text)
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(value, default=lambda r: r.text, sort_keys=True))
    return (type(value).__name__, value)


class Checker:
    """Counts decrypted cells and mismatches by kind, with the rows where they happened."""

    def __init__(self, keys: dict[str, "daead.DeterministicAead"]):
        self.keys = keys
        self.rows = 0
        self.decrypted = 0
        self.mismatches: dict[str, list[int]] = defaultdict(list)
        self.key_values: dict[str, set] = defaultdict(set)

    def mismatch(self, kind: str, row: int) -> None:
        self.mismatches[kind].append(row)

    def decrypt(self, key_link: str, ciphertext: str, row: int, field: str) -> bytes | None:
        primitive = self.keys.get(key_link)
        if primitive is None:
            self.mismatch("keyLink not in the keys file(s)", row)
            return None
        try:
            raw = base64.b64decode(ciphertext.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            self.mismatch(f"{field}: not base64 (not encrypted?)", row)
            return None
        try:
            plaintext = primitive.decrypt_deterministically(raw, b"")
        except tink.TinkError:
            self.mismatch(f"{field}: Tink cannot decrypt it", row)
            return None
        self.decrypted += 1
        return plaintext

    def note_key_value(self, key_link: str, value) -> None:
        self.key_values[key_link].add(hashable(value))

    def finish(self) -> int:
        for key_link, values in self.key_values.items():
            if len(values) > 1:
                self.mismatch("one keyLink serves several key-field values", 0)
        total = sum(len(rows) for rows in self.mismatches.values())
        print(
            f"tink_decrypt: {self.rows} rows, {self.decrypted} cells decrypted, "
            f"{total} mismatches"
        )
        if not total:
            return 0
        for kind in sorted(self.mismatches):
            rows = self.mismatches[kind]
            distinct = list(dict.fromkeys(r for r in rows if r > 0))
            listed = distinct[:MAX_ROWS_LISTED]
            where = ""
            if listed:
                more = ", ..." if len(distinct) > len(listed) else ""
                where = " (rows " + ", ".join(map(str, listed)) + more + ")"
            print(f"  {kind}: {len(rows)}{where}")
        return 1


# --------------------------------------------------------------------------------------- CSV


def check_csv(args, checker: Checker) -> None:
    pii = args.pii
    with open_input(args.encrypted) as enc_f, open_input(args.original) as orig_f:
        enc = csv.reader(enc_f, delimiter=args.delimiter)
        orig = csv.reader(orig_f, delimiter=args.delimiter)
        orig_header = next(orig, None)
        enc_header = next(enc, None)
        if orig_header is None:
            raise UsageError(f"{args.original}: no header")
        if enc_header is None:
            raise UsageError(f"{args.encrypted}: no header")
        if enc_header != orig_header + META_COLUMNS:
            checker.mismatch(
                "encrypted header is not the original columns + strmMeta columns", 0
            )
            return
        missing = [c for c in pii + ([args.key_field] if args.key_field else [])
                   if c not in orig_header]
        if missing:
            raise UsageError(f"{args.original}: no column(s) {', '.join(missing)}")
        pii_idx = {orig_header.index(c): c for c in pii}
        key_idx = orig_header.index(args.key_field) if args.key_field else None
        link_idx = len(orig_header) + META_FIELDS.index("keyLink")

        row = 0
        while True:
            e, o = next(enc, None), next(orig, None)
            while e == []:  # blank lines
                e = next(enc, None)
            while o == []:
                o = next(orig, None)
            if e is None and o is None:
                break
            if e is None or o is None:
                rest_e = (1 if e is not None else 0) + sum(1 for r in enc if r)
                rest_o = (1 if o is not None else 0) + sum(1 for r in orig if r)
                checker.mismatch(
                    f"row counts differ (encrypted {row + rest_e}, original {row + rest_o})", 0
                )
                return
            row += 1
            checker.rows += 1
            if len(o) != len(orig_header):
                raise UsageError(f"{args.original}: row {row} has {len(o)} fields, "
                                 f"the header {len(orig_header)}")
            if len(e) != len(enc_header):
                checker.mismatch("wrong number of fields", row)
                continue
            key_link = e[link_idx]
            if not key_link:
                checker.mismatch("empty strmMeta.keyLink", row)
            for i, original in enumerate(o):
                cell = e[i]
                if i not in pii_idx:
                    if cell != original:
                        checker.mismatch(f"{orig_header[i]}: non-PII value changed", row)
                    continue
                field = pii_idx[i]
                if original == "":
                    if cell != "":
                        checker.mismatch(f"{field}: empty value was changed", row)
                    continue
                plaintext = checker.decrypt(key_link, cell, row, field)
                if plaintext is not None and plaintext != original.encode("utf-8"):
                    checker.mismatch(f"{field}: decrypted value differs from the original", row)
            if key_idx is not None and key_link:
                checker.note_key_value(key_link, o[key_idx])


def open_input(path: str):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as err:
        raise UsageError(f"cannot read {path}: {err.strerror}") from None


# ------------------------------------------------------------------------------------- JSONL


def get_path(obj, segments: list[str]):
    for s in segments:
        if not isinstance(obj, dict) or s not in obj:
            return _ABSENT
        obj = obj[s]
    return obj


def remove_path(obj, segments: list[str]) -> None:
    for s in segments[:-1]:
        if not isinstance(obj, dict) or s not in obj:
            return
        obj = obj[s]
    if isinstance(obj, dict):
        obj.pop(segments[-1], None)


def json_text_matches(original, plaintext: bytes) -> bool:
    """Whether a decrypted non-string PII value is the original's JSON text."""
    try:
        text = plaintext.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if isinstance(original, RawNumber):
        return text == original.text
    if isinstance(original, bool):
        return text == ("true" if original else "false")
    try:
        return loads_exact(text) == original  # object or array: whitespace may differ
    except ValueError:
        return False


def iter_json_lines(path: str):
    """(line number, parsed object) per non-blank line."""
    with open_input(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = loads_exact(line)
            except ValueError:
                raise UsageError(f"{path}: line {n} is not JSON") from None
            yield n, obj


def check_jsonl(args, checker: Checker) -> None:
    pii = [(p, p.split("/")) for p in args.pii]
    key_segments = args.key_field.split("/") if args.key_field else None
    enc_iter = iter_json_lines(args.encrypted)
    orig_iter = iter_json_lines(args.original)
    row = 0
    while True:
        e, o = next(enc_iter, None), next(orig_iter, None)
        if e is None and o is None:
            break
        if e is None or o is None:
            rest_e = (1 if e else 0) + sum(1 for _ in enc_iter)
            rest_o = (1 if o else 0) + sum(1 for _ in orig_iter)
            checker.mismatch(
                f"row counts differ (encrypted {row + rest_e}, original {row + rest_o})", 0
            )
            return
        row += 1
        checker.rows += 1
        enc, orig = e[1], o[1]
        if not isinstance(enc, dict) or not isinstance(orig, dict):
            checker.mismatch("row is not a JSON object", row)
            continue
        meta = enc.pop("strmMeta", None)
        if not isinstance(meta, dict) or sorted(set(meta) - {JSON_FIELDS}) != sorted(META_FIELDS):
            checker.mismatch("strmMeta missing or without its four fields", row)
            continue
        # jsonFields: exactly the PII fields whose original value is JSON other than a string
        # (their ciphertext is of the JSON text), and only when there are any
        expected_json = sorted(
            name
            for name, segments in pii
            if not isinstance(get_path(orig, segments), str)
            and get_path(orig, segments) is not None
            and get_path(orig, segments) is not _ABSENT
        )
        listed = meta.get(JSON_FIELDS, [])
        if (JSON_FIELDS in meta and not listed) or not isinstance(listed, list):
            checker.mismatch("strmMeta.jsonFields is empty or not a list", row)
        elif sorted(listed) != expected_json:
            checker.mismatch("strmMeta.jsonFields does not list the non-string PII fields", row)
        key_link = meta.get("keyLink")
        if not isinstance(key_link, str) or not key_link:
            checker.mismatch("empty strmMeta.keyLink", row)
            key_link = ""
        for name, segments in pii:
            original = get_path(orig, segments)
            value = get_path(enc, segments)
            if original is _ABSENT:
                if value is not _ABSENT:
                    checker.mismatch(f"{name}: absent in the original but present", row)
                continue
            if original is None or original == "":
                if hashable(value) != hashable(original):
                    checker.mismatch(f"{name}: null or empty value was changed", row)
                continue
            if not isinstance(value, str):
                checker.mismatch(f"{name}: not encrypted (not a string)", row)
                continue
            plaintext = checker.decrypt(key_link, value, row, name)
            if plaintext is None:
                continue
            if isinstance(original, str):
                ok = plaintext == original.encode("utf-8", "surrogatepass")
            else:
                ok = json_text_matches(original, plaintext)
            if not ok:
                checker.mismatch(f"{name}: decrypted value differs from the original", row)
        if key_segments is not None and key_link:
            kv = get_path(orig, key_segments)
            checker.note_key_value(key_link, None if kv is _ABSENT else kv)
        # Everything but the PII values must be as it was.
        for _, segments in pii:
            remove_path(enc, segments)
            remove_path(orig, segments)
        if enc != orig:
            checker.mismatch("non-PII fields changed", row)


# -------------------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="tink_decrypt.py",
        description="Check keylink's encrypted output with stock Google Tink.",
    )
    p.add_argument("--keys", action="append", required=True, metavar="KEYS.csv")
    p.add_argument("--encrypted", required=True, metavar="ENC")
    p.add_argument("--original", required=True, metavar="ORIG")
    p.add_argument("--pii", required=True, help="comma-separated PII fields (a/b for nested)")
    p.add_argument("--format", choices=["csv", "jsonl"])
    p.add_argument("--key-field", dest="key_field")
    p.add_argument("--delimiter", default=",", help="CSV delimiter (default ,)")
    args = p.parse_args(argv)
    args.pii = [f.strip() for f in args.pii.split(",") if f.strip()]
    if not args.pii:
        p.error("--pii names no field")
    if len(args.delimiter) != 1:
        p.error("--delimiter must be one character")
    if args.format is None:
        ext = os.path.splitext(args.encrypted)[1].lower()
        args.format = "jsonl" if ext in (".jsonl", ".ndjson", ".json") else "csv"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    csv_field_limit()
    try:
        checker = Checker(load_keys(args.keys))
        if args.format == "csv":
            check_csv(args, checker)
        else:
            check_jsonl(args, checker)
    except UsageError as e:
        print(f"tink_decrypt: error: {e}", file=sys.stderr)
        return 2
    return checker.finish()


if __name__ == "__main__":
    sys.exit(main())
