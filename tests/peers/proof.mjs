// The proof format's pieces both JavaScript test peers need, from ../shared/ARCHITECTURE.md
// ("The proof format"): a reading's leaf and its hash, the RFC 9162 tree hash, COSE's
// Sig_structure. Not part of the product.
import { encode, sha256 } from "./cbor.mjs";

export const CONTENT_TYPE = "application/vnd.factoryops.microproof+cbor";
export const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;

// {1: seq, 2: ts_ns, 3: signal, 4: value (a float, or text), 5: unit, 6: quality}
export function leafBytes({ seq, ts_ns, signal, value, unit, quality }) {
  return encode(
    new Map([
      [1n, BigInt(seq)],
      [2n, BigInt(ts_ns)],
      [3n, signal],
      [4n, value],
      [5n, unit],
      [6n, BigInt(quality)],
    ]),
  );
}

export const leafHash = (leaf) => sha256(Buffer.from([0]), leaf);
export const nodeHash = (left, right) => sha256(Buffer.from([1]), left, right);

// RFC 9162 s.2.1.1: MTH of the leaf hashes, split at the largest power of two below n
export function treeHash(hashes) {
  if (hashes.length === 1) return hashes[0];
  let k = 1;
  while (k * 2 < hashes.length) k *= 2;
  return nodeHash(treeHash(hashes.slice(0, k)), treeHash(hashes.slice(k)));
}

export function sigStructure(protectedBytes, payload) {
  return encode(["Signature1", protectedBytes, Buffer.alloc(0), payload]);
}
