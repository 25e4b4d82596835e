import fs from 'node:fs';
import path from 'node:path';
import { ArchInputError } from '../../contract/errors.js';
import { howToMove, isManaged, managedMoveRefusal } from '../../contract/managers.js';
import { managerOf, parseManagedNamespaces, type ManagerFacts } from '../../core/container-manager.js';
import { REPO_ROOT } from '../support/images.js';

/** Recorded from a real CRI plugin (crictl) and a real Docker 20.10 on test nodes: labels and spec annotations. */
const recorded = (name: string): Required<ManagerFacts> =>
  JSON.parse(
    fs.readFileSync(path.join(REPO_ROOT, 'test/fixtures/container-managers', `${name}.json`), 'utf8'),
  ) as Required<ManagerFacts>;

describe('managerOf, from what containerd records', () => {
  test('a CRI container and its sandbox: kubernetes', () => {
    expect(managerOf(recorded('cri-container'))).toBe('kubernetes');
    expect(managerOf(recorded('cri-sandbox'))).toBe('kubernetes');
  });

  test("a CRI container read from runc's state (spec annotations, no labels): kubernetes", () => {
    const { namespace, annotations } = recorded('cri-container');
    expect(managerOf({ namespace, annotations })).toBe('kubernetes');
  });

  test('kubelet labels alone (io.kubernetes.pod.*) say kubernetes, whatever the namespace', () => {
    expect(managerOf({ namespace: 'default', labels: { 'io.kubernetes.pod.name': 'p' } })).toBe('kubernetes');
  });

  test("a Docker container: docker; read from runc's state (namespace moby, no labels): docker", () => {
    const dk = recorded('docker-container');
    expect(managerOf(dk)).toBe('docker');
    expect(managerOf({ namespace: dk.namespace, annotations: dk.annotations })).toBe('docker');
  });

  test("ctr containers in the orchestrators' namespaces, without their labels: containerd (not names alone)", () => {
    expect(managerOf({ namespace: 'k8s.io', labels: {}, annotations: {} })).toBe('containerd');
    expect(managerOf({ namespace: 'moby', labels: { team: 'a' }, annotations: {} })).toBe('containerd');
    expect(managerOf({ namespace: 'default', labels: {} })).toBe('containerd');
  });

  test('ARCH_MANAGED_NAMESPACES names other managers; recorded facts still win', () => {
    const extra = { nerdctl: 'nerdctl', 'k8s.io': 'ecs-agent' };
    expect(managerOf({ namespace: 'nerdctl', labels: {} }, extra)).toBe('nerdctl');
    expect(managerOf({ namespace: 'nerdctl' }, extra)).toBe('nerdctl');
    expect(managerOf(recorded('cri-container'), extra)).toBe('kubernetes');
    expect(managerOf({ namespace: 'default', labels: {} }, extra)).toBe('containerd');
  });
});

describe('ARCH_MANAGED_NAMESPACES', () => {
  test('pairs separated by commas or spaces', () => {
    expect(parseManagedNamespaces('nerdctl=nerdctl, ecs=ecs-agent')).toEqual({ nerdctl: 'nerdctl', ecs: 'ecs-agent' });
    expect(parseManagedNamespaces(undefined)).toEqual({});
    expect(parseManagedNamespaces('')).toEqual({});
  });

  test.each(['nerdctl', '=docker', 'ns=', 'ns=Docker Engine', 'a/b=x'])('"%s" is refused, naming the field', (v) => {
    expect(() => parseManagedNamespaces(v)).toThrow(ArchInputError);
    expect(() => parseManagedNamespaces(v)).toThrow(/^ARCH_MANAGED_NAMESPACES: .*Fix: /);
  });
});

describe('what users are told', () => {
  test('containerd is not managed; the others are', () => {
    expect([undefined, 'containerd', 'docker', 'kubernetes', 'nerdctl'].map(isManaged)).toEqual([
      false,
      false,
      true,
      true,
      true,
    ]);
  });

  test('the refusal names the manager and the way to move it there', () => {
    expect(managedMoveRefusal('k8s.io/abc', 'kubernetes')).toMatch(
      /^k8s\.io\/abc is managed by Kubernetes: .*Fix: .*ARCH_CHECKPOINT_ID.*finalize.*drain the node or delete the pod/,
    );
    expect(howToMove('docker')).toMatch(/finalize.*docker run/);
    expect(howToMove('nerdctl')).toMatch(/let nerdctl create it again/);
  });
});
