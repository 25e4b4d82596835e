import fsp from 'node:fs/promises';
import type http2 from 'node:http2';
import net from 'node:net';
import { CheckpointUnusableError } from '../contract/errors.js';
import type { Manifest } from './manifest.js';
import type { OciSpec } from './oci-spec.js';
import { stringField, wireFields } from './protobuf-wire.js';

/**
 * Whose job a checkpoint is. The checkpoint's name (ARCH_CHECKPOINT_ID) is
 * chosen by the container, so any container of the namespace could name
 * another one's checkpoint and be restored with its processes, memory and
 * secrets. The manifest (signed) therefore records what the container cannot
 * choose on its own: the Kubernetes pod namespace (from the CRI annotations;
 * a pod cannot pick another namespace's) and the image, and a restore into a
 * container that differs in either is refused. The same job restarted (same
 * image, same pod namespace, same ARCH_CHECKPOINT_ID) still gets its
 * checkpoint back.
 *
 * The image comes from containerd's own record of the container (image
 * name and the digest it resolves to in containerd's image store: the same
 * on every node that has the same image, pulled or imported), asked over
 * containerd's gRPC socket, whose address the container's shim was started
 * with. That costs a few milliseconds (no ctr process), run while the
 * checkpoint is verified. Where containerd cannot be asked (runc called
 * without containerd), the CRI annotation's image name is used, else the
 * image is recorded as unknown (null) and only an unknown image matches it.
 */
export type Owner = NonNullable<Manifest['owner']>;

const POD_NAMESPACE_ANNOTATIONS = ['io.kubernetes.cri.sandbox-namespace', 'io.kubernetes.pod.namespace'];
const CRI_IMAGE_ANNOTATION = 'io.kubernetes.cri.image-name';
const ASK_TIMEOUT_MS = 2000;

export function podNamespaceOf(spec: OciSpec): string | null {
  for (const a of POD_NAMESPACE_ANNOTATIONS) {
    const v = spec.annotations?.[a];
    if (v) return v;
  }
  return null;
}

/**
 * The owner of the container `id`: `fromPid` is a process below its
 * containerd shim (the container's init, or arch-runc itself when containerd
 * called it). Never throws: what cannot be learnt is null, and `whyUnknown`
 * hears why containerd could not say (for the log).
 */
export async function ownerOf(
  spec: OciSpec,
  namespace: string,
  id: string,
  fromPid: number,
  whyUnknown?: (why: string) => void,
): Promise<Owner> {
  let fromContainerd: string | undefined;
  try {
    const address = await containerdAddressAbove(fromPid);
    if (!address) throw new Error(`no containerd shim above process ${fromPid}`);
    fromContainerd = await imageFromContainerd(address, namespace, id);
    if (!fromContainerd) throw new Error(`containerd at ${address} records no image for ${namespace}/${id}`);
  } catch (err) {
    whyUnknown?.((err as Error).message);
  }
  return {
    podNamespace: podNamespaceOf(spec),
    image: fromContainerd ?? spec.annotations?.[CRI_IMAGE_ANNOTATION] ?? null,
  };
}

/** Refuse a checkpoint whose owner is not this container's (CheckpointUnusableError 'identity'). */
export function assertSameOwner(recorded: Owner | undefined, current: Owner, acceptUnrecorded: boolean): void {
  if (!recorded) {
    if (acceptUnrecorded) return; // an old manifest, accepted by ARCH_ACCEPT_UNSIGNED during an upgrade (and logged so)
    throw new CheckpointUnusableError(
      'identity',
      'the checkpoint records no owner (pod namespace, image): written by an older ARCH. Fix: checkpoint again with this ARCH; during an upgrade ARCH_ACCEPT_UNSIGNED=1 restores old checkpoints',
    );
  }
  if (recorded.podNamespace !== current.podNamespace) {
    throw new CheckpointUnusableError(
      'identity',
      `the checkpoint belongs to pod namespace ${JSON.stringify(recorded.podNamespace)}, this container is in ${JSON.stringify(current.podNamespace)}`,
    );
  }
  if (recorded.image !== current.image) {
    throw new CheckpointUnusableError(
      'identity',
      `the checkpoint was taken from image ${JSON.stringify(recorded.image)}, this container runs ${JSON.stringify(current.image)}. Fix: give each job its own ARCH_CHECKPOINT_ID; a job restarted with a new image starts fresh`,
    );
  }
}

/** containerd's address from the command line of the nearest containerd shim above `pid` (`-address X`). */
export async function containerdAddressAbove(pid: number): Promise<string | undefined> {
  let p = pid;
  for (let i = 0; i < 6 && p > 1; i++) {
    const args = (await fsp.readFile(`/proc/${p}/cmdline`, 'utf8')).split('\0');
    if (/containerd-shim/.test(args[0] ?? '')) {
      for (let j = 0; j < args.length; j++) {
        const a = args[j]!;
        if (a === '-address' || a === '--address') return args[j + 1] || undefined;
        const m = /^--?address=(.+)$/.exec(a);
        if (m) return m[1];
      }
      return undefined;
    }
    const ppid = /^PPid:\s*(\d+)$/m.exec(await fsp.readFile(`/proc/${p}/status`, 'utf8'))?.[1];
    p = Number(ppid ?? 0);
  }
  return undefined;
}

/** "name@digest" of the container's image, from containerd (undefined: containerd knows no image for it). */
async function imageFromContainerd(address: string, namespace: string, id: string): Promise<string | undefined> {
  const socket = address.replace(/^unix:\/\//, '');
  // Loaded when first used: node:http2 cannot be part of arch-runc's start-up snapshot, and
  // import() does not work in code started from one (process.getBuiltinModule: Node >= 20.16).
  const builtin = (process as { getBuiltinModule?: (id: string) => unknown }).getBuiltinModule;
  const { connect } = (builtin ? builtin('node:http2') : await import('node:http2')) as typeof http2;
  const session = connect('http://localhost', { createConnection: () => net.connect(socket) });
  session.on('error', () => undefined); // a call's own promise reports it
  const timer = setTimeout(
    () => session.destroy(new Error(`containerd at ${socket} did not answer in ${ASK_TIMEOUT_MS} ms`)),
    ASK_TIMEOUT_MS,
  );
  try {
    // GetContainerResponse.container (1) → Container.image (3)
    const container = field(
      await grpcCall(session, namespace, '/containerd.services.containers.v1.Containers/Get', stringField(1, id)),
      1,
    );
    const name = container && field(container, 3)?.toString('utf8');
    if (!name) return undefined;
    // GetImageResponse.image (1) → Image.target (3) → Descriptor.digest (2)
    const image = await grpcCall(
      session,
      namespace,
      '/containerd.services.images.v1.Images/Get',
      stringField(1, name),
    ).catch(() => undefined);
    const target = image && field(field(image, 1) ?? Buffer.alloc(0), 3);
    const digest = target && field(target, 2)?.toString('utf8');
    return digest ? `${name}@${digest}` : name;
  } finally {
    clearTimeout(timer);
    session.close();
  }
}

/** One unary gRPC call (no compression); the response message's bytes. */
function grpcCall(
  session: http2.ClientHttp2Session,
  namespace: string,
  method: string,
  message: Buffer,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ':method': 'POST',
      ':path': method,
      'content-type': 'application/grpc',
      te: 'trailers',
      'containerd-namespace': namespace,
    });
    const chunks: Buffer[] = [];
    let status: string | undefined;
    let detail = '';
    const onHeaders = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] !== undefined) status = String(h['grpc-status']);
      if (h['grpc-message'] !== undefined) detail = decodeURIComponent(String(h['grpc-message']));
    };
    req.on('response', onHeaders);
    req.on('trailers', onHeaders);
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('error', reject);
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      if (status !== '0') return reject(new Error(`${method}: grpc-status ${status ?? '?'} ${detail}`));
      if (body.length < 5 || body[0] !== 0) return reject(new Error(`${method}: unexpected response framing`));
      resolve(body.subarray(5, 5 + body.readUInt32BE(1)));
    });
    const frame = Buffer.alloc(5);
    frame.writeUInt32BE(message.length, 1);
    req.end(Buffer.concat([frame, message]));
  });
}

/** The first length-delimited field `fieldNo` of a protobuf message (undefined if absent or malformed). */
function field(msg: Buffer, fieldNo: number): Buffer | undefined {
  try {
    for (const f of wireFields(msg)) if (f.no === fieldNo && f.wire === 2) return f.bytes;
  } catch {
    // malformed: as if absent
  }
  return undefined;
}
