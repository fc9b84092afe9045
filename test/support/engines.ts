// The container engines the test command started (scripts/engines/docker.sh): a private
// dockerd and a private Podman API service, each with the test images imported. A test that
// needs them and finds them missing fails: it never skips.
export interface TestEngine {
  name: 'docker' | 'podman';
  socket: string;
  endpoint: string;
  /** busybox: sh, nc, sleep... */
  image: string;
  /** busybox and node */
  nodeImage: string;
}

export function containerEngines(): TestEngine[] {
  const docker = process.env.BERTH_TEST_DOCKER_SOCKET;
  const podman = process.env.BERTH_TEST_PODMAN_SOCKET;
  const image = process.env.BERTH_TEST_IMAGE;
  const nodeImage = process.env.BERTH_TEST_NODE_IMAGE;
  if (!docker || !podman || !image || !nodeImage) {
    throw new Error(
      'container engine tests need BERTH_TEST_DOCKER_SOCKET, BERTH_TEST_PODMAN_SOCKET, BERTH_TEST_IMAGE and BERTH_TEST_NODE_IMAGE: run them through `npm test`, which starts dockerd and podman (scripts/engines/docker.sh)',
    );
  }
  return [
    { name: 'docker', socket: docker, endpoint: `unix://${docker}`, image, nodeImage },
    { name: 'podman', socket: podman, endpoint: `unix://${podman}`, image, nodeImage },
  ];
}
