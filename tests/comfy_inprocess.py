"""Runs API prompts through ComfyUI's own engine in this process, without the HTTP server (used by
test_comfy_nodes.py in a child process, so ComfyUI's global state never touches the test process).

usage: python comfy_inprocess.py COMFY_DIR BASE_DIR JOBS_JSON RESULT_JSON
JOBS_JSON: {"prompts": {name: API prompt}, "workflows": {name: UI workflow}, "max_new_tokens": N}; workflows
are converted with the loaded node definitions and set to the fixture checkpoint. All prompts run on one
executor (its cache keeps the loaded model). RESULT_JSON gets, per name, the prompt, validation errors,
success, the executor's status messages and the UI outputs of every node; and how many models pam_core's
model cache holds at the end.
"""

import asyncio
import itertools
import json
import os
import sys
from pathlib import Path


class NoClientServer:
    """What PromptExecutor needs from PromptServer (no client listens; the executor keeps status messages)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None

    def send_sync(self, event, data, sid=None):
        pass


def main(comfy_dir, base, jobs_path, result_path):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from comfy_env import comfy_args, use_fixture_model, workflow_to_prompt

    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    sys.argv = ["main.py", *comfy_args(Path(base))]
    import comfy.options
    comfy.options.enable_args_parsing()
    # isort: off
    import utils.extra_config  # ComfyUI's `utils` package must be imported first, as main.py does
    from comfy.cli_args import args
    import execution
    import nodes
    # isort: on

    for config in itertools.chain(*args.extra_model_paths_config):  # as main.py applies them
        utils.extra_config.load_extra_path_config(config)

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    jobs = json.loads(open(jobs_path, encoding="utf-8").read())

    def input_types(class_type):
        node = nodes.NODE_CLASS_MAPPINGS.get(class_type)
        return node.INPUT_TYPES() if node is not None else None

    prompts = dict(jobs.get("prompts", {}))
    prompts.update({name: use_fixture_model(workflow_to_prompt(flow, input_types), jobs["max_new_tokens"])
                    for name, flow in jobs.get("workflows", {}).items()})
    results = {"loaded_pam_nodes": sorted(n for n in nodes.NODE_CLASS_MAPPINGS if n.startswith("PAM"))}
    server = NoClientServer()
    executor = execution.PromptExecutor(server, cache_type=False, cache_args={"lru": 0, "ram": 0})
    for name, prompt in prompts.items():
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(name, prompt, None))
        entry = {"prompt": prompt, "valid": valid, "error": error, "node_errors": node_errors}
        if valid:
            executor.execute(prompt, name, {}, outputs)
            entry.update(success=executor.success, status=executor.status_messages,
                         outputs=executor.history_result.get("outputs", {}))
        results[name] = entry
    from pam_core.loading import MODELS

    results["models_in_pam_core_cache"] = len(MODELS)
    with open(result_path, "w", encoding="utf-8") as out:
        json.dump(results, out, default=repr)


if __name__ == "__main__":
    main(*sys.argv[1:5])
