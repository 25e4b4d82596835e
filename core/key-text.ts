/**
 * A 32-byte secret key as the administrator writes it into a settings file
 * or variable: 64 hex digits or base64 (what `openssl rand -hex 32` or
 * `-base64 32` prints). One reader for every ARCH key of that kind (the
 * payload key, the store key); each caller names its setting in the error.
 */
export function parseKeyText(v: string): Buffer | undefined {
  const s = v.trim();
  let key: Buffer | undefined;
  if (/^[0-9a-fA-F]{64}$/.test(s)) key = Buffer.from(s, 'hex');
  else if (/^[A-Za-z0-9+/]{43}=?$/.test(s)) key = Buffer.from(s, 'base64');
  return key && key.length === 32 ? key : undefined;
}

/** The key lines of a key file: trimmed, without blank lines and `#` comments (the first seals, every one opens). */
export function keyLines(body: string): string[] {
  return body
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
}
