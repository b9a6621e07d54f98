// A gateway written in JavaScript: it seals windows of readings into micro-proofs and writes
// the upload bodies, from ../shared/ARCHITECTURE.md and docs/protocol.md alone, with node's
// own crypto (OpenSSL) and the peers' deterministic CBOR. The hub must accept what an
// independent signer makes of the same documents (tests/integration/test_receipt_peer.py).
// A test peer, not part of the product.
//
//   node proof_signer.mjs OUT_DIR WINDOWS READINGS_PER_WINDOW
//
// writes OUT_DIR/device.pem (the public key to register) and OUT_DIR/upload-<i>.cbor, one
// POST /v1/proofs body a window, chained from genesis.
import { createHash, generateKeyPairSync, sign } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

import { Tag, encode, sha256 } from "./cbor.mjs";
import { CONTENT_TYPE, P256_N, leafBytes, leafHash, sigStructure, treeHash } from "./proof.mjs";

const VALUES = [21.5, 40000.0, -0.0, NaN, Infinity, 1e-7, 0.1, -65504.0, "text, ünï", 32768.0];
const T0 = 1_700_000_000_000_000_000n;

// Welford's running mean and M2, with min and max: [n, mean, M2, min, max] of each signal's
// numbers (NaN and text are not counted)
function statistics(readings) {
  const out = new Map();
  for (const r of readings) {
    if (typeof r.value !== "number" || Number.isNaN(r.value)) continue;
    const s = out.get(r.signal) ?? { n: 0, mean: 0, m2: 0, min: Infinity, max: -Infinity };
    s.n += 1;
    const delta = r.value - s.mean;
    s.mean += delta / s.n;
    s.m2 += delta * (r.value - s.mean);
    s.min = Math.min(s.min, r.value);
    s.max = Math.max(s.max, r.value);
    out.set(r.signal, s);
  }
  return new Map([...out].map(([signal, s]) => [signal, [BigInt(s.n), s.mean, s.m2, s.min, s.max]]));
}

function lowS(signature) {
  const s = BigInt(`0x${signature.subarray(32).toString("hex")}`);
  if (s <= P256_N >> 1n) return signature;
  const twin = Buffer.from((P256_N - s).toString(16).padStart(64, "0"), "hex");
  return Buffer.concat([signature.subarray(0, 32), twin]);
}

function main([outDir, windows, perWindow]) {
  mkdirSync(outDir, { recursive: true });
  const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
  writeFileSync(join(outDir, "device.pem"), publicKey.export({ type: "spki", format: "pem" }));
  const kid = createHash("sha256").update(publicKey.export({ type: "spki", format: "der" })).digest();
  let prev = Buffer.alloc(32);
  let seq = 0n;
  for (let w = 0; w < Number(windows); w++) {
    const readings = Array.from({ length: Number(perWindow) }, (_, i) => ({
      seq: seq + BigInt(i),
      ts_ns: T0 + (seq + BigInt(i)) * 1_000_000n,
      signal: i % 3 ? "line-1/pressure" : "line-1/rpm",
      value: VALUES[(w + i) % VALUES.length],
      unit: i % 3 ? "bar" : "1/min",
      quality: 0n,
    }));
    const leaves = readings.map(leafBytes);
    const last = readings[readings.length - 1];
    const payload = new Map([
      [1n, 1n],
      [2n, BigInt(w)],
      [3n, readings[0].seq],
      [4n, last.seq],
      [5n, readings[0].ts_ns],
      [6n, last.ts_ns],
      [7n, BigInt(readings.length)],
      [8n, treeHash(leaves.map(leafHash))],
      [9n, prev],
      [10n, null],
      [12n, statistics(readings)],
    ]);
    const iat = last.ts_ns / 1_000_000_000n;
    const claims = new Map([[1n, `utid:${kid.toString("hex")}`], [6n, iat]]);
    const protectedBytes = encode(new Map([[1n, -7n], [3n, CONTENT_TYPE], [4n, kid], [15n, claims]]));
    const payloadBytes = encode(payload);
    const der = sign("sha256", sigStructure(protectedBytes, payloadBytes), {
      key: privateKey,
      dsaEncoding: "ieee-p1363",
    });
    const cose = encode(new Tag(18n, [protectedBytes, new Map(), payloadBytes, lowS(der)]));
    const body = encode(new Map([["proofs", [new Map([["cose", cose], ["leaves", Buffer.concat(leaves)]])]]]));
    writeFileSync(join(outDir, `upload-${w}.cbor`), body);
    prev = sha256(cose);
    seq += BigInt(readings.length);
  }
}

if (process.argv.length < 5) {
  process.stderr.write("usage: node proof_signer.mjs OUT_DIR WINDOWS READINGS_PER_WINDOW\n");
  process.exit(2);
}
main(process.argv.slice(2));
