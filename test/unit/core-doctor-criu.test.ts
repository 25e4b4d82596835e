import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { capabilitiesCheck, criuTooOld } from '../../core/doctor.js';

test('CRIU 3.x is too old for current kernels', () => {
  expect(criuTooOld('3.17.1', '6.1.0-28-amd64')).toContain('too old for this kernel (vDSO layout)');
});

test('CRIU before 4.2 cannot dump inet sockets on Linux 6.16 and later, and can before', () => {
  for (const k of ['6.16.0', '6.18.44-fc-v1272', '7.0.1'])
    expect(criuTooOld('4.1.1', k)).toContain('cannot checkpoint a container with a TCP or UDP socket');
  for (const k of ['6.1.0-28-amd64', '6.12.48+deb13-amd64', '6.15.9']) expect(criuTooOld('4.1.1', k)).toBeUndefined();
  for (const v of ['4.2', '4.2.1', '4.10', '5.0']) expect(criuTooOld(v, '6.18.44')).toBeUndefined();
});

test('capabilities: CAP_SYS_RESOURCE present is ok; missing is a warning naming what it costs and the fix', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'arch-caps-'));
  try {
    const status = (eff: string) => {
      const f = path.join(dir, eff);
      fs.writeFileSync(f, `Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t${eff}\nCapBnd:\t${eff}\n`);
      return f;
    };
    expect(capabilitiesCheck(status('000001ffffffffff'))).toMatchObject({ ok: true });
    const without = capabilitiesCheck(status('000001fffeffffff')); // bit 24 cleared
    expect(without).toMatchObject({ ok: false, optional: true });
    expect(without.detail).toContain('non-root');
    expect(without.fix).toContain('SYS_RESOURCE');
    expect(capabilitiesCheck(path.join(dir, 'missing'))).toMatchObject({ ok: true, info: true });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
