#!/bin/sh
${directives}
# A floe pilot (${tag}) written by the factory's sge plugin; qsub reads the lines above.
${environment}
export FLOE_BATCH_ID="$$JOB_ID"
${body}
