// CPU check of how the two plugin libraries register their plugins (plugins/pluginLib.cpp), against the stand-in
// libnvinfer of tests/fake_nvinfer.cpp (plugins/check_build.sh builds all three and runs both modes):
//   plugin_register_check dlopen   REGISTER_LIB MAIN_LIB
//     polygraphy's `--plugins` / ctypes.CDLL: dlopen(REGISTER_LIB, RTLD_NOW | RTLD_LOCAL) must leave the three
//     creators registered under namespace mq_deploy, usable (fields, createPlugin; its errors reach TensorRT's global
//     logger), with neither loadLibrary entry point exported, and still there after dlclose (-z nodelete). dlopen of
//     MAIN_LIB must register nothing.
//   plugin_register_check both     REGISTER_LIB MAIN_LIB
//     MAIN_LIB through loadLibrary first (`mq-deploy build` in a process that then loads REGISTER_LIB): loading
//     REGISTER_LIB keeps loadLibrary's creators, warns, and does not fail.
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>

using namespace nvinfer1;

extern "C" char const* fakeNvinferLog();
extern "C" char const* fakeNvinferNamespaceOf(IPluginCreatorInterface const* creator);

namespace
{
int gFailures = 0;
char const* const kNames[] = {"SelectiveScan", "SelectiveStateUpdate", "Hadamard"};

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    std::fflush(stdout);
    gFailures += !ok;
}

int32_t registered()
{
    int32_t n = 0;
    getPluginRegistry()->getAllCreators(&n);
    return n;
}

IPluginCreatorV3One* find(char const* name)
{
    return static_cast<IPluginCreatorV3One*>(getPluginRegistry()->getCreator(name, "1", "mq_deploy"));
}

//! The three creators are registered under mq_deploy and answer as the ONNX parser asks them.
void checkRegistered(char const* how)
{
    check(registered() == 3, std::string(how) + ": 3 creators registered (" + std::to_string(registered()) + ")");
    for (char const* name : kNames)
    {
        IPluginCreatorV3One* c = find(name);
        check(c != nullptr && std::strcmp(c->getPluginName(), name) == 0 && std::strcmp(c->getPluginVersion(), "1") == 0,
            std::string(how) + ": " + name + " version 1 found in namespace mq_deploy");
        char const* ns = c != nullptr ? fakeNvinferNamespaceOf(c) : nullptr;
        check(ns != nullptr && std::strcmp(ns, "mq_deploy") == 0, std::string(how) + ": " + name + " registered under mq_deploy");
    }
}

//! A Hadamard plugin from the registered creator; an unknown field is refused through TensorRT's global logger.
void checkUsable(char const* how)
{
    IPluginCreatorV3One* c = find("Hadamard");
    if (c == nullptr)
        return check(false, std::string(how) + ": Hadamard creator");
    PluginFieldCollection const* names = c->getFieldNames();
    check(names != nullptr && names->nbFields == 2 && std::strcmp(names->fields[0].name, "n") == 0,
        std::string(how) + ": Hadamard field names");
    int32_t n = 1536;
    float scale = 0.0F;
    PluginField f[2] = {{"n", &n, PluginFieldType::kINT32, 1}, {"out_scale", &scale, PluginFieldType::kFLOAT32, 1}};
    PluginFieldCollection fc{2, f};
    IPluginV3* p = c->createPlugin("Hadamard", &fc, TensorRTPhase::kBUILD);
    check(p != nullptr, std::string(how) + ": Hadamard createPlugin n 1536");
    delete p;
    PluginField bad{"no_such_field", &n, PluginFieldType::kINT32, 1};
    PluginFieldCollection badFc{1, &bad};
    check(c->createPlugin("Hadamard", &badFc, TensorRTPhase::kBUILD) == nullptr
            && std::strstr(fakeNvinferLog(), "[E] mq_deploy plugin: ") != nullptr
            && std::strstr(fakeNvinferLog(), "unknown attribute 'no_such_field'") != nullptr,
        std::string(how) + ": an unknown field is refused, on TensorRT's global logger");
}

int dlopenMode(char const* registerLib, char const* mainLib)
{
    void* m = dlopen(mainLib, RTLD_NOW | RTLD_LOCAL);
    check(m != nullptr, std::string("dlopen ") + mainLib + (m ? "" : std::string(": ") + dlerror()));
    check(registered() == 0, "dlopen of libmq_trt_plugins.so registers nothing");
    check(m != nullptr && dlsym(m, "getCreators") != nullptr && dlsym(m, "setLoggerFinder") != nullptr,
        "libmq_trt_plugins.so exports getCreators and setLoggerFinder");

    void* h = dlopen(registerLib, RTLD_NOW | RTLD_LOCAL); // ctypes.CDLL's flags
    check(h != nullptr, std::string("dlopen ") + registerLib + (h ? "" : std::string(": ") + dlerror()));
    if (h == nullptr)
        return 1;
    checkRegistered("dlopen");
    check(dlsym(h, "getCreators") == nullptr && dlsym(h, "setLoggerFinder") == nullptr,
        "libmq_trt_plugins_register.so exports neither loadLibrary entry point");
    check(std::strstr(fakeNvinferLog(), "mq_deploy") == nullptr, "registering logs nothing");
    checkUsable("dlopen");

    check(getPluginRegistry()->loadLibrary(mainLib) == nullptr && registered() == 3,
        "loadLibrary of libmq_trt_plugins.so afterwards fails as TensorRT's does (mq-deploy checks the registry first)");
    dlclose(h);
    bool const resident = dlopen(registerLib, RTLD_NOW | RTLD_NOLOAD) != nullptr;
    check(resident, "dlclose leaves it loaded (-z nodelete)");
    if (!resident)
        return 1; // the registry now points into unmapped code
    checkRegistered("after dlclose");
    checkUsable("after dlclose");
    return 0;
}

int bothMode(char const* registerLib, char const* mainLib)
{
    void* lib = getPluginRegistry()->loadLibrary(mainLib);
    check(lib != nullptr, "loadLibrary of libmq_trt_plugins.so");
    checkRegistered("loadLibrary");
    IPluginCreatorInterface* before[3];
    for (int i = 0; i < 3; ++i)
        before[i] = find(kNames[i]);

    void* h = dlopen(registerLib, RTLD_NOW | RTLD_LOCAL);
    check(h != nullptr, std::string("dlopen ") + registerLib + " after loadLibrary" + (h ? "" : std::string(": ") + dlerror()));
    checkRegistered("loadLibrary, then dlopen");
    bool kept = true;
    for (int i = 0; i < 3; ++i)
        kept = kept && find(kNames[i]) == before[i];
    check(kept, "loadLibrary's creators are kept");
    std::string const log = fakeNvinferLog();
    check(log.find("[W] mq_deploy plugin: registering SelectiveScan version 1 in namespace mq_deploy") != std::string::npos
            && log.find("registered already") != std::string::npos,
        "the register library warns that the creators were registered already");
    // the stand-in registry logs nothing of its own (TensorRT's may log the three refusals)
    check(log.find("[E]") == std::string::npos, "and logs no error");
    return 0;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 4 || (std::strcmp(argv[1], "dlopen") != 0 && std::strcmp(argv[1], "both") != 0))
    {
        std::fprintf(stderr, "usage: %s dlopen|both REGISTER_LIB MAIN_LIB\n", argv[0]);
        return 2;
    }
    int const rc = std::strcmp(argv[1], "dlopen") == 0 ? dlopenMode(argv[2], argv[3]) : bothMode(argv[2], argv[3]);
    std::printf("%s: %d failures (%s)\n", gFailures || rc ? "FAILED" : "OK", gFailures, argv[1]);
    return gFailures || rc ? 1 : 0;
}
