#!/bin/sh
${directives}
# A floe pilot (${tag}) written by the factory's slurm plugin; sbatch reads the lines above.
${environment}
export FLOE_BATCH_ID="$$SLURM_JOB_ID"
${body}
