/**
 * The protobuf wire format, as far as ARCH reads it: a few fields of small
 * messages from containerd (runc's runtime options, the container record).
 * Written out rather than pulling a protobuf library into arch-runc's start.
 */
export type WireValue = { wire: 0; value: number } | { wire: 2; bytes: Buffer };

/**
 * Every varint (wire type 0) and length-delimited (2) field of `msg`, in
 * order; fixed-size fields are skipped. Throws on a truncated or malformed
 * message (group wire types included).
 */
export function* wireFields(msg: Buffer): Generator<{ no: number } & WireValue> {
  let i = 0;
  const varint = (): number => {
    let v = 0;
    let mul = 1;
    for (;;) {
      if (i >= msg.length) throw new Error('truncated protobuf message');
      const b = msg[i++]!;
      v += (b & 0x7f) * mul;
      if (!(b & 0x80)) return v;
      mul *= 128;
    }
  };
  while (i < msg.length) {
    const key = varint();
    const no = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) yield { no, wire, value: varint() };
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = varint();
      if (i + len > msg.length) throw new Error('truncated protobuf message');
      yield { no, wire, bytes: msg.subarray(i, i + len) };
      i += len;
    } else throw new Error(`protobuf wire type ${wire} is not read here`);
  }
}

/** Encode a varint (field keys, lengths). */
export function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

/** A length-delimited string field. */
export function stringField(fieldNo: number, s: string): Buffer {
  const b = Buffer.from(s);
  return Buffer.concat([varint((fieldNo << 3) | 2), varint(b.length), b]);
}
