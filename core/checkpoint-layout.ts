/**
 * What a checkpoint directory holds, named once (README "Checkpoint image"):
 *   manifest.json, manifest.sig, criu/ (CRIU's images, pages-N.img among
 *   them), rootfs-diff.tar, deleted.files, devshm.tar (some), volume-<n>.tar
 *   (some), kept-files.bin (some), config.json.
 * The writer (checkpoint.ts), the readers (restore.ts, store.ts,
 * transfer.ts) and the tests spell these names from here.
 */

/** A checkpoint directory's name (ckpt-<time>-<random>): storage other nodes write names only these. */
export const CHECKPOINT_NAME_RE = /^ckpt-[0-9TZ-]+-[0-9a-f]{8}$/;

export const MANIFEST_FILE = 'manifest.json';
/** The publishing node's signature of MANIFEST_FILE's bytes (trust.ts). */
export const SIGNATURE_FILE = 'manifest.sig';
/** CRIU's images and runc's descriptors.json. */
export const CRIU_DIR = 'criu';
export const ROOTFS_TAR = 'rootfs-diff.tar';
export const DELETED_FILES = 'deleted.files';
/** The files of the container's /dev/shm when it is a host directory bound in (a Kubernetes pod's): core/dev-shm.ts. */
export const DEVSHM_TAR = 'devshm.tar';
/** The files of the pod's emptyDir volumes the container mounts, one archive each, in the manifest's order: core/pod-volumes.ts. */
export const volumeTar = (index: number): string => `volume-${index}.tar`;
/**
 * The contents of the files the job rewrites in place in its work dir and its own volumes, one after
 * another (the manifest's workFiles and volumeFiles say where each starts): core/work-files.ts.
 */
export const KEPT_FILES = 'kept-files.bin';
/**
 * The archives of the job's files beside CRIU's images: the writable layer's, /dev/shm's, the emptyDirs',
 * the files it rewrites in place.
 * The job's data like its memory: sealed and chunked with it, decrypted on restore before they are checked.
 */
export const LAYER_ARCHIVE = new RegExp(
  `^(${ROOTFS_TAR.replace('.', '\\.')}|${DEVSHM_TAR.replace('.', '\\.')}|volume-\\d+\\.tar|${KEPT_FILES.replace('.', '\\.')})$`,
);
/** The OCI spec (oci-spec.ts): a bundle's config.json, kept in the checkpoint under the same name. */
export const SPEC_FILE = 'config.json';

/** CRIU's memory page images, by name inside CRIU_DIR: the bulk of a checkpoint. */
export const PAGE_IMAGE_NAME = /^pages-\d+\.img$/;
/** The same, by path relative to the checkpoint directory (as the manifest lists files). */
export const PAGE_IMAGE_PATH = new RegExp(`^${CRIU_DIR}/${PAGE_IMAGE_NAME.source.slice(1)}`);

/**
 * CRIU's images of what the job holds, not of how it is built: its memory
 * pages; its ghost files (ghost-file-<hex id>.img: the contents of files it
 * holds open after deleting them, a temporary or spill file, which exist
 * nowhere else); the files of its own tmpfs mounts (tmpfs-dev-<dev>.tar.gz.img,
 * tmpfs-<mnt>.tar.gz.img: a Docker container's /dev/shm, where POSIX shared
 * memory lives, and its --tmpfs scratch, as large as the job makes them); and
 * the data in flight that CRIU keeps: pipe and FIFO buffers, socket and TCP
 * queues, terminal input, SysV message queues, BPF map values. Sealed and
 * chunked like the writable layer's archive; CRIU's other images are small
 * descriptions of the processes.
 */
export const CONTENT_IMAGE_NAME =
  /^(pages-\d+|ghost-file-[0-9a-f]+|tmpfs-(dev-)?\d+\.tar\.gz|pipes-data|fifo-data|sk-queues|tcp-stream-[0-9a-f]+|tty-data|ipcns-msg-\d+|bpfmap-data)\.img$/;
/** The same, by path relative to the checkpoint directory. */
export const CONTENT_IMAGE_PATH = new RegExp(`^${CRIU_DIR}/${CONTENT_IMAGE_NAME.source.slice(1)}`);
