/* The C API end to end: edgeinfer-c-example ARTIFACT IMAGE...
 * Prints "<image>\t<index>\t<probability>\t<label>" (classifier, top 3) or
 * "<image>\tembedding\t<dim>\t<first value>" (embedding model) per image, one encoded from a
 * memory buffer to show ei_*_encoded. Exit code 0, 1 (open failed) or 3 (an image failed). */
#include <stdio.h>
#include <stdlib.h>

#include "edgeinfer.h"

static unsigned char* slurp(const char* path, size_t* n) {
    FILE* f = fopen(path, "rb");
    unsigned char* buf = NULL;
    long len;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = (unsigned char*)malloc(len > 0 ? (size_t)len : 1);
        *n = buf ? fread(buf, 1, (size_t)len, f) : 0;
    }
    fclose(f);
    return buf;
}

int main(int argc, char** argv) {
    char err[1024];
    int status = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: %s ARTIFACT IMAGE...\n", argv[0]);
        return 1;
    }
    ei_model* m = ei_open(argv[1], NULL, NULL, err, sizeof err);
    if (!m) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    printf("# %s, libedgeinfer %s, OpenVINO %s\n", ei_model_name(m), ei_version(), ei_engine_version());
    for (int i = 2; i < argc; i++) {
        int rc;
        if (ei_is_classifier(m)) {
            ei_prediction top[3];
            int n = 0;
            size_t size = 0;
            unsigned char* data = (i % 2) ? slurp(argv[i], &size) : NULL;
            rc = data ? ei_classify_encoded(m, data, size, 3, top, &n, err, sizeof err)
                      : ei_classify_file(m, argv[i], 3, top, &n, err, sizeof err);
            free(data);
            for (int j = 0; rc == EI_OK && j < n; j++)
                printf("%s\t%d\t%.6f\t%s\n", argv[i], top[j].index, top[j].probability, top[j].label);
        } else {
            size_t dim = ei_output_dim(m);
            float* e = (float*)calloc(dim ? dim : 1, sizeof(float));
            rc = ei_embed_file(m, argv[i], e, dim, err, sizeof err);
            if (rc == EI_OK) printf("%s\tembedding\t%zu\t%.6f\n", argv[i], dim, e[0]);
            free(e);
        }
        if (rc != EI_OK) {
            fprintf(stderr, "error: %s: %s (status %d)\n", argv[i], err, rc);
            status = 3;
        }
    }
    ei_close(m);
    return status;
}
