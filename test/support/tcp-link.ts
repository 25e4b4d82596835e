import net from 'node:net';

/**
 * A TCP link on loopback between a client and a server (a node's worker and
 * Temporal) that a test can cut and heal. Cut, it behaves like a lost
 * network: nothing passes either way and nothing is answered (no reset, no
 * close), so the client notices only by its own timeouts.
 */
export interface TcpLink {
  /** host:port to give the client. */
  address: string;
  cut(): void;
  heal(): void;
  close(): Promise<void>;
}

export async function startTcpLink(target: string): Promise<TcpLink> {
  const i = target.lastIndexOf(':');
  const host = target.slice(0, i);
  const port = Number(target.slice(i + 1));
  let cut = false;
  const pairs = new Set<{ a: net.Socket; b?: net.Socket }>();
  const server = net.createServer((a) => {
    const pair: { a: net.Socket; b?: net.Socket } = { a };
    pairs.add(pair);
    a.on('error', () => undefined);
    a.on('close', () => {
      pair.b?.destroy();
      pairs.delete(pair);
    });
    if (cut) {
      a.pause(); // accepted by the kernel, never answered
      return;
    }
    const b = net.connect(port, host);
    pair.b = b;
    b.on('error', () => a.destroy());
    b.on('close', () => a.destroy());
    a.pipe(b);
    b.pipe(a);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address() as net.AddressInfo;
  return {
    address: `127.0.0.1:${addr.port}`,
    cut() {
      cut = true;
      for (const p of pairs) {
        // Nothing passes any more, and nobody is told.
        p.a.unpipe();
        p.b?.unpipe();
        p.a.pause();
        p.b?.pause();
      }
    },
    heal() {
      cut = false;
      // What was cut off stays dead (its peers gave up on it): the client connects again.
      for (const p of pairs) {
        p.a.destroy();
        p.b?.destroy();
      }
    },
    async close() {
      for (const p of pairs) {
        p.a.destroy();
        p.b?.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
