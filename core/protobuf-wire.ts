/**
 * The protobuf wire format, as far as ARCH reads it: a few fields of small
 * messages from containerd (runc's runtime options, the container record)
 * and CRIU (its files.img, which core/criu-timerfd.ts also rewrites).
 * Written out rather than pulling a protobuf library into arch-runc's start.
 */
export type WireValue = { wire: 0; value: number } | { wire: 2; bytes: Buffer };

/** A field of a message with where it lies in it (its key included), fixed-size ones too. */
export type WireSpan = { no: number; start: number; end: number } & (WireValue | { wire: 1 | 5; bytes: Buffer });

/** Every field of `msg`, in order. Throws on a truncated or malformed message (group wire types included). */
export function* wireSpans(msg: Buffer): Generator<WireSpan> {
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
  const take = (len: number): Buffer => {
    if (i + len > msg.length) throw new Error('truncated protobuf message');
    const b = msg.subarray(i, i + len);
    i += len;
    return b;
  };
  while (i < msg.length) {
    const start = i;
    const key = varint();
    const no = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      const value = varint();
      yield { no, wire, value, start, end: i };
    } else if (wire === 1 || wire === 5) {
      const bytes = take(wire === 1 ? 8 : 4);
      yield { no, wire, bytes, start, end: i };
    } else if (wire === 2) {
      const bytes = take(varint());
      yield { no, wire, bytes, start, end: i };
    } else throw new Error(`protobuf wire type ${wire} is not read here`);
  }
}

/**
 * Every varint (wire type 0) and length-delimited (2) field of `msg`, in
 * order; fixed-size fields are skipped. Throws on a truncated or malformed
 * message (group wire types included).
 */
export function* wireFields(msg: Buffer): Generator<{ no: number } & WireValue> {
  for (const f of wireSpans(msg)) {
    if (f.wire === 0) yield { no: f.no, wire: 0, value: f.value };
    else if (f.wire === 2) yield { no: f.no, wire: 2, bytes: f.bytes };
  }
}

/**
 * `msg` with some fields written anew: `change` gives a field's new encoding
 * (varintField, bytesField), or undefined to keep its bytes as they are.
 */
export function rewriteFields(msg: Buffer, change: (f: WireSpan) => Buffer | undefined): Buffer {
  const parts: Buffer[] = [];
  for (const f of wireSpans(msg)) parts.push(change(f) ?? msg.subarray(f.start, f.end));
  return Buffer.concat(parts);
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

/** A length-delimited field. */
export function bytesField(fieldNo: number, b: Buffer): Buffer {
  return Buffer.concat([varint((fieldNo << 3) | 2), varint(b.length), b]);
}

/** A length-delimited string field. */
export function stringField(fieldNo: number, s: string): Buffer {
  return bytesField(fieldNo, Buffer.from(s));
}

/** A varint field. */
export function varintField(fieldNo: number, n: number): Buffer {
  return Buffer.concat([varint(fieldNo << 3), varint(n)]);
}
