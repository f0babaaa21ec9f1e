# syntax=docker/dockerfile:1
# tfjs-pretrain, CPU image: Node 20, the wasm backend (and cpu), the coordinator and workers.
#   docker build -f docker/cpu.Dockerfile -t tfjs-pretrain:cpu .
# Entry points on PATH: coordinator, worker, pretrain (the package's bins); k8s/ runs
# `coordinator start` and `worker start`. Runs as uid 1000 with a read-only root filesystem:
# it writes only to the run directory (--run-dir) and /tmp.
ARG NODE_IMAGE=node:20-bookworm-slim

# build: tsc and the AssemblyScript SIMD kernels need the dev dependencies
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts scripts
COPY proto proto
COPY src src
COPY coordinator coordinator
COPY worker worker
COPY bench bench
COPY tests tests
RUN npm run build

# runtime dependencies only
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules node_modules
COPY package.json ./
COPY proto proto
COPY data/sample data/sample
COPY --from=build /src/dist/src dist/src
COPY --from=build /src/dist/coordinator dist/coordinator
COPY --from=build /src/dist/worker dist/worker
RUN chmod 0755 dist/coordinator/cli.js dist/worker/cli.js dist/src/cli/pretrain.js \
 && ln -s /app/dist/coordinator/cli.js /usr/local/bin/coordinator \
 && ln -s /app/dist/worker/cli.js /usr/local/bin/worker \
 && ln -s /app/dist/src/cli/pretrain.js /usr/local/bin/pretrain
USER 1000:1000
# control 7070, worker data plane 7071, worker health 8081, metrics 9400 (coordinator) / 9401 (worker)
EXPOSE 7070 7071 8081 9400 9401
CMD ["coordinator", "start", "--help"]
