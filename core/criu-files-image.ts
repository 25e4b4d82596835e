/**
 * CRIU's files.img: every open file of the dumped tasks, one FileEntry
 * message each (CRIU's images/fdinfo.proto), after two magic numbers
 * (IMG_COMMON_MAGIC, then FILES_MAGIC: CRIU's criu/include/magic.h), each
 * entry preceded by its length (u32, little-endian).
 */
export const FILES_IMAGE = 'files.img';
const FILES_MAGIC = 0x56303138;

/** Far above the files.img of a job with many thousands of open files. */
export const MAX_FILES_IMAGE = 64 << 20;

/** FileEntry's fields that ARCH reads (images/fdinfo.proto). */
export const FILE_ENTRY = { isk: 4, tfd: 12 } as const;

/**
 * The FileEntry messages of a files.img, in order; undefined when `img` is
 * not one. A truncated last entry is left out (CRIU refuses such an image).
 */
export function fileEntries(img: Buffer): Buffer[] | undefined {
  if (img.length < 8 || img.readUInt32LE(4) !== FILES_MAGIC) return undefined;
  const entries: Buffer[] = [];
  for (let i = 8; i + 4 <= img.length;) {
    const len = img.readUInt32LE(i);
    i += 4;
    if (i + len > img.length) break;
    entries.push(img.subarray(i, i + len));
    i += len;
  }
  return entries;
}

/** A files.img of `entries`, with the magic numbers of `like` (the image they came from). */
export function filesImage(like: Buffer, entries: Buffer[]): Buffer {
  const parts: Buffer[] = [like.subarray(0, 8)];
  for (const e of entries) {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(e.length);
    parts.push(len, e);
  }
  return Buffer.concat(parts);
}
