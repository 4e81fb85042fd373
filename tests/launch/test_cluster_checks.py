"""A sweep checked against the SLURM cluster before anything is submitted (launch/cluster.py): the parser on
captured `scontrol` text, the checks as pure functions, and the real one-node test cluster (2 CPUs, no GPUs)."""
import subprocess
import sys

import pytest

from cells import ROOT, explain, run
from ftgrid.errors import ConfigError
from ftgrid.launch import cluster
from ftgrid.launch.spec import Resources

# `scontrol -o show partition` / `-o show node` of the project's test cluster (slurm-wlm 22.05.8)
TEST_PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=vm PriorityJobFactor=1 PriorityTier=1 "
    "RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=2 "
    "TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED "
    "TRES=cpu=2,mem=24105M,node=1,billing=2\n")
TEST_NODES = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=2  CPUAlloc=1 CPUEfctv=2 CPUTot=2 CPULoad=8.65 "
    "AvailableFeatures=(null) ActiveFeatures=(null) Gres=(null) NodeAddr=vm NodeHostName=vm Version=22.05.8 "
    "OS=Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=24105 AllocMem=3072 FreeMem=18677 Sockets=1 "
    "Boards=1 State=MIXED ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=debug  "
    "BootTime=2026-11-30T05:44:29 CfgTRES=cpu=2,mem=24105M,billing=2 AllocTRES=cpu=1,mem=3G\n")
# A GPU cluster as plain (multi-line) `scontrol show` prints it: two partitions, GPU nodes in one.
GPU_PARTITIONS = """PartitionName=cpu
   AllocNodes=ALL Default=YES QoS=N/A
   MaxNodes=UNLIMITED MaxTime=2-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED
   Nodes=c[01-02]
   State=UP TotalCPUs=128 TotalNodes=2

PartitionName=gpu
   AllocNodes=ALL Default=NO QoS=N/A
   MaxNodes=4 MaxTime=12:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=48
   Nodes=g[01-04]
   State=UP TotalCPUs=256 TotalNodes=4 MaxMemPerNode=500000
"""
GPU_NODES = "\n\n".join(
    [f"NodeName=c0{i} Arch=x86_64 CPUTot=64 Gres=(null)\n   RealMemory=256000 State=IDLE Partitions=cpu"
     for i in (1, 2)] +
    [f"NodeName=g0{i} Arch=x86_64 CPUTot=64 Gres=gpu:h100:8(S:0-1)\n   RealMemory=1000000 State=IDLE "
     f"Partitions=gpu" for i in (1, 2, 3, 4)]) + "\n"


def test_parser_reads_records_with_spaces_in_values():
    (node,) = cluster.parse_records(TEST_NODES)
    assert node["OS"] == "Linux 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0"
    assert (node["CPUTot"], node["RealMemory"], node["Gres"], node["Partitions"]) == ("2", "24105", "(null)", "debug")
    assert [r["PartitionName"] for r in cluster.parse_records(GPU_PARTITIONS)] == ["cpu", "gpu"]
    assert cluster.gres_gpus("gpu:h100:8(S:0-1)") == 8 and cluster.gres_gpus("gpu:2,shard:8") == 2
    assert cluster.gres_gpus("(null)") == 0


def test_cluster_from_captured_text():
    test = cluster.Cluster.from_text(TEST_PARTITIONS, TEST_NODES, "MaxArraySize            = 1001\n")
    debug = test.partition("")
    assert (debug.name, debug.max_time_min, [n.cpus for n in debug.nodes], debug.nodes[0].gpus) == \
        ("debug", None, [2], 0)
    assert test.max_array_size == 1001
    gpu = cluster.Cluster.from_text(GPU_PARTITIONS, GPU_NODES).partition("gpu")
    assert (gpu.max_time_min, gpu.max_nodes, gpu.max_cpus_per_node, len(gpu.nodes), gpu.nodes[0].gpus) == \
        (720, 4, 48, 4, 8)


def fit(given=(), text=(GPU_PARTITIONS, GPU_NODES), **res):
    r = Resources(**res)
    notes = cluster.fit_resources(r, cluster.Cluster.from_text(*text), set(given))
    return r, notes


def test_defaults_take_the_clusters_values_and_what_the_user_asked_is_checked():
    r, notes = fit(text=(TEST_PARTITIONS, TEST_NODES), gpu="cpu", gpus_per_node=0)
    assert r.cpus_per_task == 2 and notes == ["cpus-per-task 2: the default 8 exceeds the nodes of partition 'debug'"]
    r, notes = fit(partition="gpu", gpus_per_node=8, cpus_per_task=48, time="12:00:00", mem="400G", nodes=4,
                   given=("cpus_per_task",))
    assert notes == [] and r.cpus_per_task == 48
    r, notes = fit(partition="gpu", gpus_per_node=8)
    assert (r.time, r.cpus_per_task) == ("12:00:00", 8) and notes == [\
        "time 12:00:00: the default 24:00:00 exceeds the MaxTime of partition 'gpu'"]
    refused = {
        "partition 'gpus' does not exist on this cluster (did you mean 'gpu'?); valid: cpu, gpu":
            dict(partition="gpus"),
        "--time 1-00:00:00 exceeds the MaxTime of partition 'gpu' (720 min)": dict(partition="gpu",
                                                                                   time="1-00:00:00"),
        "5 node(s) asked; partition 'gpu' has 4": dict(partition="gpu", nodes=5, time="1:00:00"),
        "--cpus-per-task 64 exceeds the 48 CPU(s) per node of partition 'gpu'": dict(partition="gpu", cpus_per_task=64,
                                                                                        time="1:00:00"),
        "--mem 600G exceeds the 500000 MB per node of partition 'gpu'": dict(partition="gpu", mem="600G", time="60"),
        "1 GPU(s) per node asked; the nodes of partition 'cpu' have 0; --gpu cpu runs on CPUs": dict(gpus_per_node=1),
        "9 GPU(s) per node asked; the nodes of partition 'gpu' have 8": dict(partition="gpu", gpus_per_node=9,
                                                                             time="60"),
    }
    for message, res in refused.items():
        with pytest.raises(ConfigError) as e:
            fit(given=res, **res)
        assert str(e.value) == message


def test_sbatch_reason():
    text = "sbatch: error: CPU count per node can not be satisfied\n" \
           "sbatch: error: Batch job submission failed: More processors requested than permitted\n"
    assert cluster.sbatch_reason(text) == "More processors requested than permitted"


# ---------------------------------------------------------------------------------------------
# the real test cluster

GRID = ROOT / "launch" / "grid.py"
CELL = ["--models", "pythia-tiny", "--ranks", "4", "--gpu", "cpu", "--max-steps", "4", "--seq-len", "64",
        "--set", "eval_rows=16", "--executor", "slurm", "--time", "00:10:00"]


@pytest.mark.slurm
def test_the_sweep_is_checked_against_the_real_cluster(slurm_cluster, tmp_path):
    out = tmp_path / "too-many-cpus"
    proc = run([sys.executable, GRID, *CELL, "--out", out, "--cpus-per-task", "64"], timeout=300)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.strip().startswith("error: --cpus-per-task 64 exceeds the ") and \
        len(proc.stderr.strip().splitlines()) == 1, explain(proc)
    assert not out.exists()  # refused before anything was written
    out = tmp_path / "bad-feature"  # what only sbatch knows: one error line with its reason; cells stay pending
    proc = run([sys.executable, GRID, *CELL, "--out", out, "--constraint", "nosuchfeature"], timeout=300)
    assert proc.returncode == 2, explain(proc)
    assert [line for line in proc.stderr.splitlines() if "error" in line] == \
        ["error: sbatch refused 1 cell(s): Invalid feature specification; 0 submitted, 1 left pending"], explain(proc)
    assert "Traceback" not in proc.stderr
    (cell,) = out.glob("*/cell.yaml")
    assert not (cell.parent / "status.json").exists()  # pending


@pytest.mark.slurm
@pytest.mark.slow
def test_the_default_cpus_fit_the_one_node_cluster(slurm_cluster, tmp_path):
    """The README's plain command (default --cpus-per-task 8 on a 2-CPU node) runs and reports."""
    out = tmp_path / "defaults"
    proc = run([sys.executable, GRID, *CELL, "--out", out, "--mem", "3G", "--wait"], timeout=900)
    assert proc.returncode == 0, explain(proc)
    cpus = subprocess.run(["scontrol", "-o", "show", "node"], capture_output=True, text=True).stdout
    node_cpus = int(cluster.parse_records(cpus)[0]["CPUTot"])
    assert f"cluster: cpus-per-task {node_cpus}: the default 8 exceeds the nodes of partition" in proc.stdout
    (cell,) = out.glob("*/cell.yaml")
    assert f"#SBATCH --cpus-per-task={node_cpus}\n" in (cell.parent / "job.sbatch").read_text()
    assert '"state": "done"' in (cell.parent / "status.json").read_text()
