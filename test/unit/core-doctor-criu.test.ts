import { criuTooOld } from '../../core/doctor.js';

test('CRIU 3.x is too old for current kernels', () => {
  expect(criuTooOld('3.17.1', '6.1.0-28-amd64')).toContain('too old for this kernel (vDSO layout)');
});

test('CRIU before 4.2 cannot dump inet sockets on Linux 6.16 and later, and can before', () => {
  for (const k of ['6.16.0', '6.18.44-fc-v1272', '7.0.1'])
    expect(criuTooOld('4.1.1', k)).toContain('cannot checkpoint a container with a TCP or UDP socket');
  for (const k of ['6.1.0-28-amd64', '6.12.48+deb13-amd64', '6.15.9']) expect(criuTooOld('4.1.1', k)).toBeUndefined();
  for (const v of ['4.2', '4.2.1', '4.10', '5.0']) expect(criuTooOld(v, '6.18.44')).toBeUndefined();
});
