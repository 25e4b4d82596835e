import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { SEARCH_ATTRIBUTE_DEFS } from '../../contract/search-attributes.js';
import { REPO_ROOT } from '../support/images.js';

/**
 * docker-compose.yml cannot run here (no Docker engine): its structure is
 * checked instead — services, images, ports, start order, and that the
 * one-shot registers exactly ARCH's search attributes.
 */
interface Service {
  image: string;
  ports?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  command?: string[] | string;
  entrypoint?: string[];
  restart?: string;
}

const compose = parse(fs.readFileSync(path.join(REPO_ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
};
const s = compose.services;

test('services: PostgreSQL, schema one-shot, server, search-attribute one-shot, UI', () => {
  expect(Object.keys(s).sort()).toEqual([
    'arch-search-attributes',
    'postgresql',
    'temporal',
    'temporal-schema',
    'temporal-ui',
  ]);
});

test('current images, pinned, no auto-setup', () => {
  const images = Object.values(s).map((x) => x.image);
  for (const img of images) {
    expect(img).not.toMatch(/auto-setup/);
    expect(img).toMatch(/:\$\{[A-Z_]+:-[0-9][0-9.]*\}$/); // a version tag, overridable, never "latest"
  }
  expect(s.temporal!.image).toMatch(/^temporalio\/server:/);
  expect(s['temporal-ui']!.image).toMatch(/^temporalio\/ui:/);
  expect(s['temporal-schema']!.image).toMatch(/^temporalio\/admin-tools:/);
  expect(s['arch-search-attributes']!.image).toMatch(/^temporalio\/admin-tools:/);
  expect(s.postgresql!.image).toMatch(/^postgres:/);
});

test('ports: frontend 7233, UI on 8233, on loopback unless ARCH_TEMPORAL_BIND says otherwise', () => {
  expect(s.temporal!.ports).toEqual(['${ARCH_TEMPORAL_BIND:-127.0.0.1}:7233:7233']);
  expect(s['temporal-ui']!.ports).toEqual(['${ARCH_TEMPORAL_BIND:-127.0.0.1}:8233:8080']);
  expect(s['temporal-ui']!.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
  expect(s.postgresql!.ports).toBeUndefined(); // the database stays inside the compose network
});

test('the server runs on PostgreSQL and starts after its schema exists', () => {
  expect(s.temporal!.environment).toMatchObject({
    DB: 'postgres12',
    POSTGRES_SEEDS: 'postgresql',
    POSTGRES_USER: 'temporal',
  });
  expect(s.temporal!.depends_on).toEqual({ 'temporal-schema': { condition: 'service_completed_successfully' } });
  expect(s['temporal-schema']!.depends_on).toEqual({ postgresql: { condition: 'service_healthy' } });
  const schema = String(s['temporal-schema']!.command);
  expect(schema).toMatch(/temporal-sql-tool --plugin postgres12/);
  expect(schema).toMatch(/update-schema -d \/etc\/temporal\/schema\/postgresql\/v12\/temporal\/versioned/);
  expect(schema).toMatch(/update-schema -d \/etc\/temporal\/schema\/postgresql\/v12\/visibility\/versioned/);
  expect(compose.volumes).toHaveProperty('temporal-postgres');
});

test("the one-shot registers exactly ARCH's search attributes, as Keyword, once the server is healthy", () => {
  const job = s['arch-search-attributes']!;
  expect(job.depends_on).toEqual({ temporal: { condition: 'service_healthy' } });
  expect(job.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
  const script = String(job.command);
  expect(script).toMatch(
    /temporal operator search-attribute create --namespace "\$\$TEMPORAL_NAMESPACE" --name "\$\$attr" --type Keyword/,
  );
  const loops = [...script.matchAll(/for attr in ([A-Za-z ]+); do/g)].map((m) => m[1]!.trim().split(/\s+/).sort());
  const expected = SEARCH_ATTRIBUTE_DEFS.map((d) => d.name).sort();
  expect(loops.length).toBe(2); // create, then check every one is listed
  for (const l of loops) expect(l).toEqual(expected);
  expect(SEARCH_ATTRIBUTE_DEFS.every((d) => d.cliType === 'Keyword')).toBe(true);
  expect(script).toMatch(/temporal operator namespace create/);
});
