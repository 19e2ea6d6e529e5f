# MSR-VTT 9k / 1k-A with SigLIP ViT-B/16 through open_clip (the paper's best: t2v R@1 51.5).
: "${BASE_ENCODER:=open_clip:ViT-B-16-SigLIP}"
: "${PRETRAINED:=webli}"
: "${MAX_WORDS:=64}"   # SigLIP's text context: its tower is bidirectional and pools the last position
: "${OUTPUT_DIR:=outputs/msrvtt_siglip_b16}"
source "$(dirname "${BASH_SOURCE[0]}")/msrvtt.sh"
