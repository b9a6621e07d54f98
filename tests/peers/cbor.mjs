// Deterministic CBOR (RFC 8949, s.4.2.1) and SHA-256 for the JavaScript test peers, written
// from the RFC: a strict decoder (one item, definite lengths; integers as BigInt, floats as
// numbers) and the one encoding a value may have (shortest heads, shortest exact floats, map
// keys in the bytewise order of their encodings). Not part of the product.
import { createHash } from "node:crypto";

export class Refused extends Error {
  constructor(link, message) {
    super(message);
    this.link = link;
  }
}

export class Tag {
  constructor(tag, value) {
    this.tag = tag;
    this.value = value;
  }
}

export const sha256 = (...parts) => {
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

export function decode(bytes) {
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

export function encode(v) {
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

export function deterministic(bytes, what) {
  const value = decode(bytes);
  if (Buffer.compare(encode(value), Buffer.from(bytes)) !== 0)
    throw new Refused("noncanonical", `${what} is not deterministic CBOR`);
  return value;
}
