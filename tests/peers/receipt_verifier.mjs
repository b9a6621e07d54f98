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
import { createHash, createPublicKey, verify } from "node:crypto";
import { readFileSync } from "node:fs";

class Refused extends Error {
  constructor(link, message) {
    super(message);
    this.link = link;
  }
}

class Tag {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

const sha256 = (...parts) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};

// ---- CBOR, strict: one item, definite lengths; integers as BigInt, floats as numbers ----

function halfToNumber(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

function decode(bytes) {
  const buf = Buffer.from(bytes);
  let pos = 0;
  const need = (n) => {
    if (pos + n > buf.length) throw new Refused("format", "CBOR item cut short");
  };
  const argument = (ai) => {
    if (ai < 24) return BigInt(ai);
    const width = { 24: 1, 25: 2, 26: 4, 27: 8 }[ai];
    if (width === undefined) throw new Refused("format", `CBOR additional info ${ai}`);
    need(width);
    let v = 0n;
    for (let i = 0; i < width; i++) v = (v << 8n) | BigInt(buf[pos + i]);
    pos += width;
    return v;
  };
  const item = (depth) => {
    if (depth > 64) throw new Refused("format", "CBOR nested too deep");
    need(1);
    const ib = buf[pos++];
    const major = ib >> 5;
    const ai = ib & 31;
    if (major === 7) {
      if (ai === 20) return false;
      if (ai === 21) return true;
      if (ai === 22) return null;
      const width = { 25: 2, 26: 4, 27: 8 }[ai];
      if (width === undefined) throw new Refused("format", `CBOR simple value ${ai}`);
      need(width);
      const at = pos;
      pos += width;
      if (width === 2) return halfToNumber(buf.readUInt16BE(at));
      return width === 4 ? buf.readFloatBE(at) : buf.readDoubleBE(at);
    }
    const n = argument(ai);
    if (major === 0) return n;
    if (major === 1) return -1n - n;
    if (major === 2 || major === 3) {
      need(Number(n));
      const raw = buf.subarray(pos, pos + Number(n));
      pos += Number(n);
      if (major === 2) return Buffer.from(raw);
      try {
        return new TextDecoder("utf-8", { fatal: true }).decode(raw);
      } catch {
        throw new Refused("format", "CBOR text is not UTF-8");
      }
    }
    if (major === 4) return Array.from({ length: Number(n) }, () => item(depth + 1));
    if (major === 5) {
      const map = new Map();
      for (let i = 0n; i < n; i++) {
        const key = item(depth + 1);
        if (map.has(key)) throw new Refused("noncanonical", "a CBOR map key appears twice");
        map.set(key, item(depth + 1));
      }
      return map;
    }
    return new Tag(n, item(depth + 1)); // major 6
  };
  const value = item(0);
  if (pos !== buf.length) throw new Refused("noncanonical", `${buf.length - pos} byte(s) after the item`);
  return value;
}

// ---- deterministic CBOR (RFC 8949 s.4.2.1): the one encoding a value may have ----

function head(major, n) {
  const mt = major << 5;
  if (n < 24n) return Buffer.from([mt | Number(n)]);
  for (const [ai, width] of [[24, 1], [25, 2], [26, 4], [27, 8]]) {
    if (n < 1n << BigInt(8 * width)) {
      const out = Buffer.alloc(1 + width);
      out[0] = mt | ai;
      for (let i = 0; i < width; i++) out[1 + i] = Number((n >> BigInt(8 * (width - 1 - i))) & 0xffn);
      return out;
    }
  }
  throw new Refused("format", "an integer past 64 bits");
}

function halfBits(x) {
  // the binary16 bits of x when a half holds it exactly, else null
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === Infinity) return sign | 0x7c00;
  if (a === 0) return sign;
  if (a > 65504) return null;
  if (a < 2 ** -14) {
    const k = a * 2 ** 24;
    return Number.isInteger(k) ? sign | k : null;
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  const frac = (a / 2 ** e - 1) * 1024;
  return Number.isInteger(frac) ? sign | ((e + 15) << 10) | frac : null;
}

function encodeFloat(x) {
  if (Number.isNaN(x)) return Buffer.from([0xf9, 0x7e, 0x00]);
  const h = halfBits(x);
  if (h !== null) return Buffer.from([0xf9, h >> 8, h & 0xff]);
  if (Math.fround(x) === x) {
    const out = Buffer.alloc(5, 0xfa);
    out.writeFloatBE(x, 1);
    return out;
  }
  const out = Buffer.alloc(9, 0xfb);
  out.writeDoubleBE(x, 1);
  return out;
}

function encode(v) {
  if (typeof v === "bigint") return v >= 0n ? head(0, v) : head(1, -1n - v);
  if (typeof v === "number") return encodeFloat(v);
  if (typeof v === "string") {
    const raw = Buffer.from(v, "utf8");
    return Buffer.concat([head(3, BigInt(raw.length)), raw]);
  }
  if (Buffer.isBuffer(v)) return Buffer.concat([head(2, BigInt(v.length)), v]);
  if (Array.isArray(v)) return Buffer.concat([head(4, BigInt(v.length)), ...v.map(encode)]);
  if (v instanceof Map) {
    const entries = [...v].map(([k, x]) => [encode(k), encode(x)]);
    entries.sort((a, b) => Buffer.compare(a[0], b[0])); // bytewise order of the encoded keys
    return Buffer.concat([head(5, BigInt(entries.length)), ...entries.flat()]);
  }
  if (v instanceof Tag) return Buffer.concat([head(6, v.tag), encode(v.value)]);
  if (v === false) return Buffer.from([0xf4]);
  if (v === true) return Buffer.from([0xf5]);
  if (v === null) return Buffer.from([0xf6]);
  throw new Refused("format", `no CBOR for ${typeof v}`);
}

function deterministic(bytes, what) {
  const value = decode(bytes);
  if (Buffer.compare(encode(value), Buffer.from(bytes)) !== 0)
    throw new Refused("noncanonical", `${what} is not deterministic CBOR`);
  return value;
}

// ---- RFC 9162 s.2.1.3.2: the root an inclusion path gives ----

function rootFrom(leafHash, index, size, path) {
  if (index >= size) throw new Refused("inclusion", `index ${index} outside a tree of ${size}`);
  let fn = index;
  let sn = size - 1n;
  let r = leafHash;
  for (const p of path) {
    if (sn === 0n) throw new Refused("inclusion", "the path is longer than the tree needs");
    if ((fn & 1n) === 1n || fn === sn) {
      r = sha256(Buffer.from([1]), p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = sha256(Buffer.from([1]), r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Refused("inclusion", "the path is shorter than the tree needs");
  return r;
}

// ---- the receipt ----

const P256_HALF_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n >> 1n;
const CONTENT_TYPE = "application/vnd.factoryops.microproof+cbor";
const NON_FINITE = { NaN: NaN, Infinity: Infinity, "-Infinity": -Infinity };

function readReceipt(path) {
  // integers keep every digit (a ts_ns is past 2^53): quote them before JSON.parse
  const text = readFileSync(path, "utf8").replace(
    /"(seq|ts_ns|quality|leaf_index)"\s*:\s*(-?\d+)/g,
    '"$1": "$2"',
  );
  return JSON.parse(text);
}

function sigStructure(protectedBytes, payload) {
  return encode(["Signature1", protectedBytes, Buffer.alloc(0), payload]);
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
  const stats = payload.get(12n);
  const signal = stats instanceof Map ? stats.get(r.signal) : undefined;
  if (typeof value === "number" && Number.isFinite(value) && Array.isArray(signal)) {
    const [, , , min, max] = signal;
    if (value < min || value > max) throw new Refused("reading", "value outside the signed min/max");
  }
  const leaf = new Map([
    [1n, seq],
    [2n, ts],
    [3n, r.signal],
    [4n, value],
    [5n, r.unit],
    [6n, BigInt(r.quality)],
  ]);
  return sha256(Buffer.from([0]), encode(leaf));
}

function checkLog(doc, cose, hubKey) {
  const receipt = decode(Buffer.from(doc.log_receipt, "base64"));
  const [protectedBytes, unprotected, payload, signature] = receipt.value;
  const hdr = decode(protectedBytes);
  if (hdr.get(1n) !== -8n || hdr.get(395n) !== 1n) throw new Refused("log", "alg -8 and vds 1");
  if (payload !== null) throw new Refused("log", "the payload (the root) must be detached");
  const [proof] = unprotected.get(396n).get(-1n);
  const [size, index, path] = decode(proof);
  const root = rootFrom(sha256(Buffer.from([0]), cose), index, size, path);
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
