"""conjure's Gradio app: type two phrases, watch both denoising trajectories and the divergence grow, get the GIFs.

    python app.py    # serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (default 127.0.0.1:7860)

The page is laid out here; the handlers, limits and model cache are in
`conjure/app_handlers.py`. The Run event is the public API endpoint `/conjure`, the Why panel's
button `/explain`; the second tab's ("Compare many") is `/matrix`:

    from gradio_client import Client
    job = Client("http://127.0.0.1:7860/").submit("snow leopard", "bengal tiger", api_name="/conjure")
    job = Client("http://127.0.0.1:7860/").submit("leopard\ncheetah\nzebra", api_name="/matrix")
    job = Client("http://127.0.0.1:7860/").submit("a black horse", "a white horse", api_name="/explain")
"""

try:  # ZeroGPU Spaces: `spaces` must be imported before torch
    import spaces  # noqa: F401
except ImportError:
    pass

import logging

import gradio as gr

from conjure import app_handlers as h

CSS = """
/* tiny images (32 px) fill their box, without blur */
.pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#status { min-height: 2.5em; }
/* the neighbours table: phrases stay on one line instead of breaking mid-word */
#matrix-neighbours td:first-child, #matrix-neighbours th:first-child { white-space: nowrap; }
/* the Why panel's captions ("snow +1127") may use the whole tile (Gradio's own stop at 80% of it) */
#why-maps .caption-label, #why-without .caption-label { max-width: calc(100% - 8px); }
"""
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])

INTRO = """
# conjure: how alike are two phrases, judged by the images they conjure?
A text-to-image diffusion model denoises the **same starting noise** twice, once under each phrase.
The score is the **Jeffreys divergence** between the two reverse diffusion processes
([Liu & Soatto, *Conjuring Semantic Similarity*](https://arxiv.org/abs/2410.16431)): the more the model's
predictions disagree along the way, the less alike the phrases. Smaller means more similar. Measuring each
phrase's pull away from what the model draws for no text at all turns it into a **cosine** of the two pulls:
1 for the same phrase, near 0 for unrelated ones; larger means more similar.
"""


MATRIX_INTRO = """
Type a few phrases, one per line. Every pair is scored once, as above, and the page shows the whole matrix,
a **map of meanings** (each phrase's own image, placed so that phrases the model treats alike sit close
together), each phrase's nearest neighbour, and the same matrix from the text encoder alone for comparison.
"""


def estimator_controls(limits, defaults, models, default_model, prefix: str = ""):
    """The model and estimator settings both tabs offer: model, steps, samples k, guidance, seed, image size."""
    model = gr.Dropdown([(label, name) for name, label in models.items()], value=default_model, label="Model",
                        elem_id=f"{prefix}model")
    with gr.Row():
        steps = gr.Slider(1, limits.max_steps, value=defaults["steps"], step=1, label="Sampler steps",
                          elem_id=f"{prefix}steps")
        samples = gr.Slider(1, limits.max_samples, value=defaults["samples"], step=1,
                            label="Monte-Carlo samples k (noise draws averaged)", elem_id=f"{prefix}samples")
        guidance = gr.Slider(1, h.MAX_GUIDANCE, value=defaults["guidance"], step=0.5,
                             label="Guidance scale (1 = none)", elem_id=f"{prefix}guidance")
    with gr.Row():
        seed = gr.Number(defaults["seed"], label="Seed", precision=0, minimum=0, maximum=h.SEED_MAX,
                         elem_id=f"{prefix}seed")
        size = gr.Dropdown(h.size_choices(default_model), value=defaults["size"], label="Image size",
                           allow_custom_value=True, elem_id=f"{prefix}size")
    return model, steps, samples, guidance, seed, size


def build_matrix_tab(limits, defaults, models, default_model) -> None:
    """The "Compare many" tab: phrases in, the Jeffreys matrix, the map and the neighbours out (`/matrix`)."""
    gr.Markdown(MATRIX_INTRO)
    phrases = gr.Textbox(label=f"Phrases, one per line (up to {limits.max_phrases})", lines=6,
                         max_lines=limits.max_phrases + 4, placeholder=h.MATRIX_EXAMPLE,
                         max_length=2 * limits.max_phrases * (limits.max_prompt_chars + 1), elem_id="matrix-phrases")
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="matrix-run")
        stop = gr.Button("Stop", variant="stop", elem_id="matrix-stop")
    gr.Examples([[h.MATRIX_EXAMPLE], ["a red apple\na green apple\na banana\na car\na bus\na bicycle"]],
                inputs=[phrases], label="Try a set")
    with gr.Accordion("Settings", open=False, elem_id="matrix-settings"):
        model, steps, samples, guidance, seed, size = estimator_controls(limits, defaults, models, default_model,
                                                                         prefix="matrix-")

    status = gr.Markdown("Type some phrases, one per line, and press **Run**.", elem_id="matrix-status")
    with gr.Row(equal_height=True):
        heatmap = gr.Image(label="By the images: cosine of the pulls (darker = closer)", format="png",
                           interactive=False, elem_id="matrix-heatmap")
        text_heatmap = gr.Image(label="By the words: text-encoder cosine (darker = closer)", format="png",
                                interactive=False, elem_id="matrix-text-heatmap")
    with gr.Row():
        meaning_map = gr.Image(label="A map of meanings", format="png", interactive=False, elem_id="matrix-map")
        neighbours = gr.Markdown(elem_id="matrix-neighbours")
    with gr.Row():
        csv = gr.DownloadButton("Download the Jeffreys matrix (CSV)", visible=False, elem_id="matrix-csv")
        heatmap_png = gr.DownloadButton("Download the heatmap (PNG)", visible=False, elem_id="matrix-heatmap-png")
        map_png = gr.DownloadButton("Download the map (PNG)", visible=False, elem_id="matrix-map-png")
    with gr.Accordion("Matrix as JSON", open=False):
        details = gr.JSON(label="Matrix as JSON", elem_id="matrix-details")

    outputs = dict(matrix_status=status, matrix_heatmap=heatmap, matrix_text_heatmap=text_heatmap,
                   matrix_map=meaning_map, matrix_neighbours=neighbours, matrix_details=details, matrix_csv=csv,
                   matrix_heatmap_png=heatmap_png, matrix_map_png=map_png)
    running = run.click(h.run_matrix, inputs=[phrases, model, steps, samples, guidance, seed, size],
                        outputs=[outputs[name] for name in h.MATRIX_OUTPUTS], api_name="matrix",
                        preprocess=False,  # raw values: the handler checks them and says what is wrong
                        show_progress="minimal")
    stop.click(None, cancels=[running], api_visibility="private")
    model.change(h.on_model_change, model, size, api_visibility="private", queue=False, preprocess=False)


WHY_INTRO = """
### Why do they differ?
Which words drive the two prompts apart, and where in the picture. Each word is left out of its prompt in
turn (its tokens masked in the text encoder's output where the model allows, else removed from the text) and the
divergence measured again, from the same noise: a word's contribution is how much the divergence falls without it. **Red** words push the prompts apart, **purple** ones pull them together.
"""


def build_why_panel(inputs) -> None:
    """The "Why do they differ?" panel under a run: computed on demand, for the prompts and settings above (`/explain`)."""
    with gr.Group(elem_id="why"):
        gr.Markdown(WHY_INTRO)
        explain = gr.Button("Explain: which words make the difference", elem_id="why-run")
        status = gr.Markdown("After a run, press **Explain** (it takes a few times as long as the run).",
                             elem_id="why-status")
        with gr.Row():
            words_a = gr.HighlightedText(label="Prompt 1: each word's contribution (each sign on its own scale)",
                                         show_legend=False, elem_id="why-a")
            words_b = gr.HighlightedText(label="Prompt 2: each word's contribution (each sign on its own scale)",
                                         show_legend=False, elem_id="why-b")
        maps = gr.Gallery(label="Where each word acts (red: it pushes the prompts apart there; purple: pulls "
                                "them together; each map on its own scale)", columns=10, height=190,
                          object_fit="contain", elem_classes="pixelated", elem_id="why-maps")
        without = gr.Gallery(label="The image drawn without each word (same noise)", columns=10, height=190,
                             object_fit="contain", elem_classes="pixelated", elem_id="why-without")
        table = gr.Markdown(elem_id="why-table")
        with gr.Accordion("Explanation as JSON", open=False):
            details = gr.JSON(label="Explanation as JSON", elem_id="why-details")
    outputs = dict(why_status=status, why_a=words_a, why_b=words_b, why_table=table, why_maps=maps,
                   why_without=without, why_details=details)
    explain.click(h.run_explain, inputs=inputs, outputs=[outputs[name] for name in h.EXPLAIN_OUTPUTS],
                  api_name="explain", show_progress="minimal",
                  preprocess=False)  # raw values: the handler checks them and says what is wrong


def build_demo() -> gr.Blocks:
    limits, defaults, models = h.app_limits(), h.DEFAULTS, h.allowed_models()
    default_model = h.default_model()
    with h.Blocks(title="conjure", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Compare two", elem_id="tab-two"):
            with gr.Row():
                prompt_a = gr.Textbox(label="Prompt 1 (trajectory A)", placeholder="snow leopard",
                                      max_length=limits.max_prompt_chars, elem_id="prompt-a")
                prompt_b = gr.Textbox(label="Prompt 2 (trajectory B)", placeholder="bengal tiger",
                                      max_length=limits.max_prompt_chars, elem_id="prompt-b")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="run")
                stop = gr.Button("Stop", variant="stop", elem_id="stop")
            gr.Examples(h.EXAMPLES, inputs=[prompt_a, prompt_b], label="Try a pair")
            with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                model, steps, samples, guidance, seed, size = estimator_controls(limits, defaults, models,
                                                                                 default_model)
                with gr.Row():
                    stages = gr.Slider(2, limits.max_stages, value=defaults["stages"], step=1,
                                       label="Morph stages", elem_id="stages")

            status = gr.Markdown("Type two phrases and press **Run**.", label="Progress", elem_id="status")
            with gr.Row(equal_height=True):
                image_a = gr.Image(label="A: denoised under prompt 1", format="png", height=256, interactive=False,
                                   elem_classes="pixelated", elem_id="image-a")
                image_b = gr.Image(label="B: denoised under prompt 2", format="png", height=256, interactive=False,
                                   elem_classes="pixelated", elem_id="image-b")
                difference = gr.Image(label="Where the two prompts' predictions differ most", format="png", height=256,
                                      interactive=False, elem_classes="pixelated", elem_id="difference")
            plot = gr.LinePlot(x="step", y="nats", color="curve", color_map=h.PLOT_COLORS, color_title="",
                               colors_in_legend=list(h.PLOT_CURVES), sort=h.plot_steps(limits.max_steps),
                               y_aggregate="sum", y_title=" ",  # the unit is in the label: a streamed plot clips a title
                               label="Divergence added at each step (nats)", elem_id="plot")
            result = gr.Markdown(label="Result", elem_id="result")
            with gr.Row():
                with gr.Column():
                    morph_gif = gr.Image(label="Morph: prompt 1 → prompt 2, same noise", height=300, interactive=False,
                                         elem_classes="pixelated", elem_id="morph-gif")
                    with gr.Row():
                        morph_download = gr.DownloadButton("Download morph GIF", visible=False, elem_id="morph-download")
                        morph_mp4 = gr.DownloadButton("Download morph MP4", visible=False, elem_id="morph-mp4-download")
                with gr.Column():
                    trajectory_gif = gr.Image(label="Both trajectories, step by step", height=300, interactive=False,
                                              elem_id="trajectory-gif")
                    with gr.Row():
                        trajectory_download = gr.DownloadButton("Download trajectories GIF", visible=False,
                                                                elem_id="trajectory-download")
                        trajectory_mp4 = gr.DownloadButton("Download trajectories MP4", visible=False,
                                                           elem_id="trajectory-mp4-download")
            with gr.Accordion("Result as JSON", open=False):
                details = gr.JSON(label="Result as JSON", elem_id="details")

            outputs = dict(image_a=image_a, image_b=image_b, difference=difference, plot=plot, status=status,
                           result=result, details=details, morph_gif=morph_gif, trajectory_gif=trajectory_gif,
                           morph_download=morph_download, trajectory_download=trajectory_download,
                           morph_mp4=morph_mp4, trajectory_mp4=trajectory_mp4)
            running = gr.on(
                [run.click, prompt_a.submit, prompt_b.submit], h.run_conjure,
                inputs=[prompt_a, prompt_b, model, steps, samples, guidance, seed, size, stages],
                outputs=[outputs[name] for name in h.OUTPUTS],
                api_name="conjure", show_progress="minimal",
                preprocess=False,  # raw values: the handler checks them, so a wrong type gets a clear message
            )
            stop.click(None, cancels=[running], api_visibility="private")
            model.change(h.on_model_change, model, size, api_visibility="private", queue=False, preprocess=False)
            build_why_panel([prompt_a, prompt_b, model, steps, samples, guidance, seed, size])
        with gr.Tab("Compare many", elem_id="tab-many"):
            build_matrix_tab(limits, defaults, models, default_model)
    return demo.queue(default_concurrency_limit=h.env_int("CONJURE_CONCURRENCY", 1),
                      max_size=h.env_int("CONJURE_QUEUE_SIZE", 16))


demo = build_demo()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:  # load the default model before serving (on ZeroGPU it must be loaded in this process)
        h.MODELS.get(h.default_model())
    except Exception as err:  # serve anyway: a Run reports the problem to the user
        logging.getLogger("conjure.app").error("could not preload %s: %s", h.default_model(), err)
    demo.launch(theme=THEME, css=CSS, max_file_size=h.MAX_UPLOAD)
