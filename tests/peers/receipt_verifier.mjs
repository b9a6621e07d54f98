// A second, independent verifier of FactoryOps per-reading receipts, in JavaScript.
//
// Written from ../shared/ARCHITECTURE.md ("The proof format", "Per-reading receipt") and the
// standards it names (RFC 8949 deterministic CBOR, RFC 9052 COSE_Sign1, RFC 9162 Merkle
// inclusion, C2SP signed notes), with node's own crypto (OpenSSL) and nothing of the
// project's Python, so that what the Python verifier accepts is checked against another
// reading of the same documents (tests/integration/test_receipt_peer.py). A test peer, not
// part of the product.
//
//   node receipt_verifier.mjs RECEIPT.json DEVICE_KEY.pem [HUB_LOG_KEY.pem]
//
// prints one JSON line, {"valid": true, "checked": [...]} or {"valid": false, "link": ...,
// "error": ...}, with the link names of docs/verify.md; exit status 0 either way (2: usage).
import { createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

import { Refused, Tag, decode, deterministic, sha256 } from "./cbor.mjs";
import { CONTENT_TYPE, P256_N, leafBytes, leafHash, nodeHash, sigStructure } from "./proof.mjs";

// ---- RFC 9162 s.2.1.3.2: the root an inclusion path gives ----

function rootFrom(leafHash, index, size, path) {
  if (index >= size) throw new Refused("inclusion", `index ${index} outside a tree of ${size}`);
  let fn = index;
  let sn = size - 1n;
  let r = leafHash;
  for (const p of path) {
    if (sn === 0n) throw new Refused("inclusion", "the path is longer than the tree needs");
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Refused("inclusion", "the path is shorter than the tree needs");
  return r;
}

// ---- the receipt ----

const P256_HALF_N = P256_N >> 1n;
const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

function readReceipt(path) {
  // integers keep every digit (a ts_ns is past 2^53): quote them before JSON.parse
  const text = readFileSync(path, "utf8").replace(
    /"(seq|ts_ns|quality|leaf_index)"\s*:\s*(-?\d+)/g,
    '"$1": "$2"',
  );
  return JSON.parse(text);
}

function checkMicroproof(cose, deviceKey) {
  if (cose[0] !== 0xd2) throw new Refused("noncanonical", "not tag 18 written as d2");
  const top = deterministic(cose, "the micro-proof");
  if (!(top instanceof Tag) || top.tag !== 18n || !Array.isArray(top.value) || top.value.length !== 4)
    throw new Refused("format", "not a tagged COSE_Sign1");
  const [protectedBytes, unprotected, payloadBytes, signature] = top.value;
  if (!(unprotected instanceof Map) || unprotected.size !== 0)
    throw new Refused("noncanonical", "the unprotected header is not the empty map");
  const hdr = deterministic(protectedBytes, "the protected header");
  const kid = hdr.get(4n);
  if (hdr.get(1n) !== -7n) throw new Refused("format", "alg is not ES256 (-7)");
  if (!Buffer.isBuffer(kid) || kid.length !== 32) throw new Refused("format", "kid is not 32 bytes");
  if (hdr.get(3n) !== CONTENT_TYPE) throw new Refused("format", "content type");
  const claims = hdr.get(15n);
  if (!(claims instanceof Map) || claims.get(1n) !== `utid:${kid.toString("hex")}`)
    throw new Refused("format", "the CWT issuer is not the kid's UTID");
  if (!Buffer.isBuffer(signature) || signature.length !== 64)
    throw new Refused("format", "an ES256 signature is 64 bytes");
  if (BigInt(`0x${signature.subarray(32).toString("hex")}`) > P256_HALF_N)
    throw new Refused("noncanonical", "a high s");
  const spki = deviceKey.export({ type: "spki", format: "der" });
  if (!sha256(spki).equals(kid)) throw new Refused("key", "the kid is not the pinned device key");
  const tbs = sigStructure(protectedBytes, payloadBytes);
  if (!verify("sha256", tbs, { key: deviceKey, dsaEncoding: "ieee-p1363" }, signature))
    throw new Refused("signature", "the COSE signature does not verify");
  return deterministic(payloadBytes, "the payload");
}

function checkReading(doc, payload) {
  const r = doc.reading;
  const seq = BigInt(r.seq);
  const ts = BigInt(r.ts_ns);
  const [first, last, firstTs, lastTs] = [3n, 4n, 5n, 6n].map((k) => payload.get(k));
  if (seq < first || seq > last) throw new Refused("reading", `seq ${seq} outside ${first}..${last}`);
  if (BigInt(doc.leaf_index) !== seq - first) throw new Refused("reading", "leaf_index is not seq - first");
  if (ts < firstTs || ts > lastTs) throw new Refused("reading", "ts_ns outside the window");
  let value = r.value;
  if (r.value_type !== "text") value = typeof value === "string" ? NON_FINITE[value] : value;
  if (value === undefined || (r.value_type === "text") !== (typeof value === "string"))
    throw new Refused("format", "reading.value");
  // a number (not NaN, which no statistics count) lies inside its signal's signed min/max
  const stats = payload.get(12n);
  if (stats instanceof Map && stats.size && typeof value === "number" && !Number.isNaN(value)) {
    const signal = stats.get(r.signal);
    if (!Array.isArray(signal)) throw new Refused("reading", "the signal is not in the signed window");
    const [, , , min, max] = signal;
    if (value < min || value > max) throw new Refused("reading", "value outside the signed min/max");
  }
  return leafHash(leafBytes({ ...r, value }));
}

function checkLog(doc, cose, hubKey) {
  const receipt = decode(Buffer.from(doc.log_receipt, "base64"));
  const [protectedBytes, unprotected, payload, signature] = receipt.value;
  const hdr = decode(protectedBytes);
  if (hdr.get(1n) !== -8n || hdr.get(395n) !== 1n) throw new Refused("log", "alg -8 and vds 1");
  if (payload !== null) throw new Refused("log", "the payload (the root) must be detached");
  const [proof] = unprotected.get(396n).get(-1n);
  const [size, index, path] = decode(proof);
  const root = rootFrom(leafHash(cose), index, size, path);
  if (!verify(null, sigStructure(protectedBytes, root), hubKey, signature))
    throw new Refused("log", "the log receipt is not the hub's signature over this root");
  // C2SP signed note: the text up to its blank line, then "— name base64(keyID || sig)"
  const note = doc.checkpoint;
  const split = note.lastIndexOf("\n\n");
  const text = note.slice(0, split + 1);
  const [origin, treeSize, rootB64] = text.split("\n");
  const raw = hubKey.export({ type: "spki", format: "der" }).subarray(-32);
  const keyId = sha256(Buffer.from(`${origin}\n`), Buffer.from([1]), raw).subarray(0, 4);
  const signed = note
    .slice(split + 2)
    .split("\n")
    .filter((line) => line.startsWith(`\u2014 ${origin} `))
    .map((line) => Buffer.from(line.slice(line.lastIndexOf(" ") + 1), "base64"))
    .some((blob) => blob.subarray(0, 4).equals(keyId) && verify(null, Buffer.from(text), hubKey, blob.subarray(4)));
  if (!signed) throw new Refused("checkpoint", "no valid signature by the hub key");
  if (BigInt(treeSize) !== size || !Buffer.from(rootB64, "base64").equals(root))
    throw new Refused("checkpoint", "the checkpoint is for another tree");
}

function main([receiptPath, devicePem, hubPem]) {
  const doc = readReceipt(receiptPath);
  const deviceKey = createPublicKey(readFileSync(devicePem));
  const cose = Buffer.from(doc.microproof, "base64");
  const checked = [];
  const payload = checkMicroproof(cose, deviceKey);
  checked.push("signature");
  const leafHash = checkReading(doc, payload);
  checked.push("reading");
  const path = doc.path.map((h) => Buffer.from(h, "base64"));
  const root = rootFrom(leafHash, BigInt(doc.leaf_index), payload.get(7n), path);
  if (!root.equals(payload.get(8n))) throw new Refused("root", "the path does not lead to the signed root");
  checked.push("inclusion", "root");
  if (hubPem && doc.log_receipt) {
    checkLog(doc, cose, createPublicKey(readFileSync(hubPem)));
    checked.push("log", "checkpoint");
  }
  return checked;
}

if (process.argv.length < 4) {
  process.stderr.write("usage: node receipt_verifier.mjs RECEIPT.json DEVICE_KEY.pem [HUB_LOG_KEY.pem]\n");
  process.exit(2);
}
try {
  process.stdout.write(`${JSON.stringify({ valid: true, checked: main(process.argv.slice(2)) })}\n`);
} catch (err) {
  const link = err instanceof Refused ? err.link : "format";
  process.stdout.write(`${JSON.stringify({ valid: false, link, error: String(err.message) })}\n`);
}
