# syntax=docker/dockerfile:1
# tfjs-pretrain, GPU image: the CPU image's contents plus @tensorflow/tfjs-node-gpu 4.22.0,
# whose native binding runs libtensorflow 2.9.1, built against CUDA 11.2 and cuDNN 8.1: the
# base is NVIDIA's CUDA 11.2.2 + cuDNN 8 (8.1.1) runtime image. Workers use --backend tensorflow.
#   docker build -f docker/gpu.Dockerfile -t tfjs-pretrain:gpu .
# The host needs an NVIDIA driver >= 460 (CUDA 11.2) and, in Kubernetes, the NVIDIA device
# plugin (nvidia.com/gpu). tfjs-node-gpu's install script downloads libtensorflow and its
# binding: package.json's allowScripts approves it (npm 11 asks for that approval).
ARG NODE_IMAGE=node:20-bookworm-slim
ARG CUDA_IMAGE=nvidia/cuda:11.2.2-cudnn8-runtime-ubuntu20.04

FROM ${NODE_IMAGE} AS node

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

# runtime dependencies and tfjs-node-gpu, installed on the runtime's own OS (its binding is
# native); the compilers are there in case no prebuilt binding matches
FROM ${CUDA_IMAGE} AS deps
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm install --no-save --omit=dev --no-audit --no-fund @tensorflow/tfjs-node-gpu@4.22.0 \
 && npm cache clean --force

FROM ${CUDA_IMAGE}
ENV NODE_ENV=production
COPY --from=node /usr/local/bin/node /usr/local/bin/node
RUN groupadd --gid 1000 node && useradd --uid 1000 --gid node --no-create-home --shell /usr/sbin/nologin node
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
CMD ["worker", "start", "--help"]
