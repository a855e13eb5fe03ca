#!/usr/bin/env python3
"""Workload B of `cargo xtask bench`, written as a data engineer would in pandas.

The same work keylink's benchmark job does: encrypt the contract's PII (UserId: purpose 1;
Email, UserName: purpose 2) with a Tink-compatible AES-SIV key per (SessionId, UTC day), write
the encrypted CSV with the strmMeta columns, the keys export, and three derived datasets
(GRANULAR [1]; CUMULATIVE [2]; GRANULAR [1] with UserId and Email masked by HMAC-SHA256).

Written to be fast, not naive: vectorised pandas, one cipher per key, every distinct (key, value)
pair encrypted once, every distinct value hashed once. Usage:

    pandas_b.py INPUT.csv OUT_DIR
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys
import uuid

import pandas as pd
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

CONTRACT_REF = "bench/clicks/1.0.0"
PII = {"UserId": 1, "Email": 2, "UserName": 2}
SEED = b"bench-seed"
RETENTION_MS = 2557 * 86_400_000
DAY_MS = 86_400_000


def main() -> None:
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    df = pd.read_csv(src, dtype=str, keep_default_na=False)

    # event time -> epoch ms and its UTC day (the key window)
    ts = pd.to_datetime(df["EventTime"], format="%Y-%m-%d %H:%M:%S", utc=True)
    ms = ts.astype("int64") // 1_000_000
    window = ms - ms % DAY_MS

    # one key per (SessionId, window)
    scope = pd.MultiIndex.from_arrays([df["SessionId"], window])
    codes, uniques = pd.factorize(scope)
    n_keys = len(uniques)
    keys = [os.urandom(64) for _ in range(n_keys)]
    key_ids = [int.from_bytes(os.urandom(4), "big") % (2**31 - 1) + 1 for _ in range(n_keys)]
    links = [str(uuid.uuid4()) for _ in range(n_keys)]
    ciphers = [AESSIV(k) for k in keys]
    prefixes = [b"\x01" + struct.pack(">I", i) for i in key_ids]

    # encrypt each distinct (key, value) once
    enc = df.copy()
    plain = {}
    for col in PII:
        values = df[col]
        pairs = pd.DataFrame({"k": codes, "v": values})
        distinct = pairs.drop_duplicates()
        cts = [
            ""
            if v == ""
            else base64.b64encode(prefixes[k] + ciphers[k].encrypt(v.encode(), [b""])).decode()
            for k, v in zip(distinct["k"].to_numpy(), distinct["v"].to_numpy())
        ]
        lookup = pd.Series(cts, index=pd.MultiIndex.from_frame(distinct[["k", "v"]]))
        enc[col] = lookup.reindex(pd.MultiIndex.from_frame(pairs)).to_numpy()
        plain[col] = values

    # consent: a single level per row in this data set (0, 1 or 2)
    level = df["Consent"].astype(int)
    enc["strmMeta.eventContractRef"] = CONTRACT_REF
    enc["strmMeta.timestamp"] = ms.astype(str)
    enc["strmMeta.keyLink"] = pd.Series(links).take(codes).to_numpy()
    enc["strmMeta.consentLevels"] = "[" + df["Consent"] + "]"
    enc.to_csv(os.path.join(out, "encrypted.csv"), index=False)

    # the keys export: Tink JSON keysets
    def keyset(i: int) -> str:
        value = base64.b64encode(b"\x12\x40" + keys[i]).decode()
        return json.dumps(
            {
                "primaryKeyId": key_ids[i],
                "key": [
                    {
                        "keyData": {
                            "typeUrl": "type.googleapis.com/google.crypto.tink.AesSivKey",
                            "value": value,
                            "keyMaterialType": "SYMMETRIC",
                        },
                        "status": "ENABLED",
                        "keyId": key_ids[i],
                        "outputPrefixType": "TINK",
                    }
                ],
            },
            separators=(",", ":"),
        )

    starts = [w for (_, w) in uniques]
    pd.DataFrame(
        {
            "keyLink": links,
            "encryptionKey": [keyset(i) for i in range(n_keys)],
            "policyId": "",
            "expiresAt": [s + RETENTION_MS for s in starts],
        }
    ).to_csv(os.path.join(out, "keys.csv"), index=False)

    def masked(col: str) -> pd.Series:
        distinct = plain[col].drop_duplicates()
        hashes = [
            "" if v == "" else hmac.new(SEED, v.encode(), hashlib.sha256).hexdigest()
            for v in distinct.to_numpy()
        ]
        return plain[col].map(pd.Series(hashes, index=distinct.to_numpy()))

    # derived[0]: GRANULAR [1] -> consent 1 rows, purpose-1 PII decrypted
    rows = level == 1
    d = enc[rows].copy()
    d["UserId"] = plain["UserId"][rows]
    d.to_csv(os.path.join(out, "d-analytics.csv"), index=False)

    # derived[1]: CUMULATIVE [2] -> max level >= 2, purposes <= 2 decrypted
    rows = level >= 2
    d = enc[rows].copy()
    for col in PII:
        d[col] = plain[col][rows]
    d.to_csv(os.path.join(out, "d-marketing.csv"), index=False)

    # derived[2]: GRANULAR [1], UserId and Email masked: UserId (purpose 1, decrypted) becomes
    # its HMAC; Email (purpose 2, not decrypted here) stays ciphertext
    rows = level == 1
    d = enc[rows].copy()
    d["UserId"] = masked("UserId")[rows]
    d.to_csv(os.path.join(out, "d-masked.csv"), index=False)


if __name__ == "__main__":
    main()
