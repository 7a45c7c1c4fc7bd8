"""Any program that speaks the engine protocol (docs/engine-protocol.md), e.g. a vendor's NPU runtime: its whole
command line is engine.command. storybot checks no model file for it and makes no memory plan for it (its memory
is its own: the memory guard still watches the whole machine)."""

from __future__ import annotations

from engines.registry import Backend, CheckedModel, EngineSettings, ModelRejected


class Command(Backend):
    name = "command"
    is_planned = False
    reads_model_files = False
    is_child_process = True

    def settings_problem(self, settings: EngineSettings) -> str:
        if not settings.command:
            return 'engine.command: required when engine.backend = "command" (the engine\'s argv, e.g. ["/opt/npu/engine", "--serve"])'
        return ""

    def check_model(self, settings: EngineSettings) -> CheckedModel:
        problem = self.settings_problem(settings)
        if problem:
            raise ModelRejected(problem)
        return CheckedModel(settings.model)  # the program finds (and checks) its own model, named in its argv

    def argv(self, settings: EngineSettings, model: CheckedModel) -> list[str]:
        return list(settings.command)


BACKEND = Command()
