#!/bin/sh
${directives}
# A floe pilot (${tag}) written by the factory's pbs plugin; qsub reads the lines above.
${environment}
# Slurm's PBS wrappers set PBS_JOBID only with its spank_pbs plugin; SLURM_JOB_ID always.
export FLOE_BATCH_ID="$${PBS_JOBID:-$$SLURM_JOB_ID}"
${body}
