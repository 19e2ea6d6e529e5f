# LSMDC (1,000-clip public test set).
: "${DATATYPE:=lsmdc}"
: "${ANNO_PATH:=data/lsmdc/anns}"
: "${VIDEO_PATH:=data/lsmdc/videos}"
: "${OUTPUT_DIR:=outputs/lsmdc_b32}"
source "$(dirname "${BASH_SOURCE[0]}")/msrvtt.sh"
