#!/usr/bin/env bash
# Debian packages the tests drive as real components (installed when missing; CI runs as root).
#   dicom3tools: dciodvfy, the DICOM validator the SEG tests run
#   dcmtk: dcmcjpeg, the JPEG encoder of the JPEG series in dicom/tests/jpeg.rs
#   orthanc, orthanc-dicomweb: the PACS (Orthanc + its DICOMweb plugin) that dicomweb/tests/orthanc.rs
#     starts on loopback with a generated configuration
#   chromium, chromium-driver: the headless browser of tests/conformance/test_openapi.py (/docs)
#     and tests/conformance/test_dashboard.py (/ui/), driven by selenium
#   postgresql: the throwaway PostgreSQL clusters (initdb in a temp folder) that testkit/src/postgres.rs
#     starts for the datastore tests on PostgreSQL, server/tests/process/cluster.rs and the
#     conformance suite's cluster mode (FERROLABEL_CLUSTER=1, tests/conformance/conftest.py)
#   haproxy: the load balancer in front of 2 servers in server/tests/process/cluster.rs and the
#     conformance suite's cluster mode (config from deploy/team/haproxy.cfg)
#   mold: the linker scripts/linker/cc uses when it is installed (.cargo/config.toml); it links the ~50
#     test binaries several times faster than GNU ld (about 1 s instead of 10 s each)
#   slurm-wlm, munge: the throwaway single-node Slurm cluster (slurmctld, slurmd and munged in a temp
#     folder, testkit/src/slurm.rs) that server/tests/process/slurm.rs hands a torchrun training to
# Add a package here when a test starts one (and say which test in a comment).
set -euo pipefail
want=(dicom3tools dcmtk orthanc orthanc-dicomweb chromium chromium-driver postgresql haproxy mold slurm-wlm munge)
missing=()
for p in "${want[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "setup-system: missing ${missing[*]}; install them (apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "setup-system: installing ${missing[*]}" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
